"""docker-compose.yml, the Dockerfile and deploy/: a KRaft Kafka, two workers whose KINDLING_*
settings are real and whose healthchecks call /health, Prometheus scraping their /metrics, Grafana
loading a dashboard whose queries use metrics the worker exports; a CPU-only, non-root image.

There is no Docker engine here: the files are parsed and checked against the code they drive."""

from __future__ import annotations

import base64
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("worker-1", "worker-2")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...] form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def test_services_exist(compose: dict) -> None:
    assert {"kafka", *WORKERS, "prometheus", "grafana"} <= set(compose["services"])


def test_worker_settings_are_real(compose: dict) -> None:
    known = set(Settings.env_names())
    for name in WORKERS:
        env = env_of(compose["services"][name])
        used = {k for k in env if k.startswith("KINDLING_")}
        assert used, name
        assert used <= known, (name, sorted(used - known))
        # every value must also parse as its setting's type
        settings = Settings.from_env(env)
        assert settings.data_dir == "/data"
        assert settings.model_dir == ""  # newest version under /data/models
        assert settings.web_enabled is True
        assert settings.partitions >= 1


def test_workers_point_at_the_kafka_service(compose: dict) -> None:
    kafka_env = env_of(compose["services"]["kafka"])
    advertised = {urlparse(a).netloc for a in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for name in WORKERS:
        service = compose["services"][name]
        broker = Settings.from_env(env_of(service)).broker
        url = urlparse(broker)
        assert url.scheme == "kafka" and url.netloc in advertised, broker
        assert url.hostname == "kafka"
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_workers_form_one_group_with_separate_state(compose: dict) -> None:
    settings = [Settings.from_env(env_of(compose["services"][n])) for n in WORKERS]
    assert len({(s.app_id, s.topic_prefix, s.partitions) for s in settings}) == 1
    mounts = {n: compose["services"][n]["volumes"] for n in WORKERS}

    def source(mount_list: list[str], target: str) -> str:
        return next(v.split(":")[0] for v in mount_list if v.split(":")[1] == target)

    data = {n: source(m, "/data") for n, m in mounts.items()}
    models = {n: source(m, "/data/models") for n, m in mounts.items()}
    assert len(set(data.values())) == len(WORKERS)  # own RocksDB state each
    assert len(set(models.values())) == 1  # one shared model store
    for n in WORKERS:
        service = compose["services"][n]
        assert service["build"] == "."
        command = service["command"]
        command = command.split() if isinstance(command, str) else command
        assert command == ["kindling", "worker"]
    declared = set(compose.get("volumes") or {})
    assert set(data.values()) | set(models.values()) <= declared


def test_worker_command_is_a_real_cli_command(compose: dict) -> None:
    from workers.cli import build_parser

    args = build_parser().parse_args(compose["services"]["worker-1"]["command"][1:])
    assert args.command == "worker"


def test_kafka_is_kraft_single_node(compose: dict) -> None:
    services = compose["services"]
    assert not any("zookeeper" in name for name in services)
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.8.0"
    env = env_of(kafka)
    assert not any("ZOOKEEPER" in k for k in env)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node}@kafka:9093"
    listeners = dict(
        item.split("://", 1)[::-1] for item in env["KAFKA_LISTENERS"].split(",")
    )
    assert listeners == {":9092": "PLAINTEXT", ":9093": "CONTROLLER"}
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners.values()
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert env[key] == "1"
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    assert "test" in kafka["healthcheck"]


# ------------------------------------------------------------------------------ the image
def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) per Dockerfile instruction, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_image_installs_the_cpu_torch_wheel_before_the_project() -> None:
    steps = _dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [args for word, args in steps if word == "RUN"]
    torch = next(i for i, r in enumerate(runs) if re.search(r"\btorch==", r))
    project = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch < project
    argv = shlex.split(runs[torch])
    assert argv[:2] == ["pip", "install"]
    index = argv[argv.index("--index-url") + 1]
    assert index == "https://download.pytorch.org/whl/cpu"  # not PyPI's CUDA build
    pinned = next(a for a in argv if a.startswith("torch=="))
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert pinned in ci, "the image and CI must install the same torch"


def test_image_runs_as_a_non_root_user_that_owns_the_data_dir() -> None:
    steps = _dockerfile()
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    user = users[-1].split(":")[0]
    last_user = max(i for i, (word, _) in enumerate(steps) if word == "USER")
    assert all(word != "RUN" for word, _ in steps[last_user + 1:]), "RUN after USER runs as it"
    setup = " ".join(args for word, args in steps[:last_user] if word == "RUN")
    assert re.search(rf"useradd\b.*\b{user}\b", setup)
    assert re.search(rf"chown -R {user}:{user} /data\b", setup)
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "KINDLING_DATA_DIR=/data" in env
    port = re.search(r"KINDLING_METRICS_PORT=(\d+)", env).group(1)
    health = next(args for word, args in steps if word == "HEALTHCHECK")
    assert "/health" in health and "KINDLING_METRICS_PORT" in health and port


def test_dockerignore_keeps_state_and_vcs_out_of_the_build() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", "kindling-data", "tests"} <= ignored


# ------------------------------------------------------------------------------ healthchecks
def test_worker_healthchecks_call_health_on_the_metrics_port(compose: dict) -> None:
    for name in WORKERS:
        service = compose["services"][name]
        port = Settings.from_env(env_of(service)).metrics_port
        assert port > 0
        check = service["healthcheck"]
        command = " ".join(check["test"])
        assert f"http://127.0.0.1:{port}/health" in command
        assert check["test"][0] in ("CMD", "CMD-SHELL")
        assert int(check["retries"]) >= 1 and check["start_period"]
        assert f"{port}:{port}" in service["ports"] or any(
            p.endswith(f":{port}") for p in service["ports"])


def test_health_is_what_the_worker_serves() -> None:
    """The healthcheck's path is the worker's route (workers/web.py)."""
    from workers.metrics import Metrics
    from workers.web import WebServer

    app = WebServer(Metrics(), lambda: None, "127.0.0.1", 0).application()
    paths = {r.resource.canonical for r in app.router.routes()}
    assert {"/health", "/metrics"} <= paths


# ------------------------------------------------------------------------------ monitoring
def test_prometheus_scrapes_every_worker(compose: dict) -> None:
    service = compose["services"]["prometheus"]
    mounts = dict(v.rsplit(":", 2)[:2] if v.count(":") == 2 else v.split(":") for v in
                  service["volumes"] if v.startswith("./"))
    config_path = next(host for host, target in mounts.items()
                       if target == "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load((ROOT / config_path).read_text(encoding="utf-8"))
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    paths = {job.get("metrics_path", "/metrics") for job in config["scrape_configs"]}
    assert paths == {"/metrics"}
    want = {f"{n}:{Settings.from_env(env_of(compose['services'][n])).metrics_port}"
            for n in WORKERS}
    assert targets == want
    assert "--config.file=/etc/prometheus/prometheus.yml" in service["command"]


def _grafana_mounts(compose: dict) -> dict[str, str]:
    service = compose["services"]["grafana"]
    return {target.removesuffix(":ro"): host for host, target in
            (v.split(":", 1) for v in service["volumes"] if v.startswith("./"))}


def test_grafana_provisions_prometheus_and_the_dashboard(compose: dict) -> None:
    grafana = compose["services"]["grafana"]
    mounts = _grafana_mounts(compose)
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    source = sources["datasources"][0]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]
    providers = yaml.safe_load((provisioning / "dashboards" / "kindling.yml").read_text())
    folder = providers["providers"][0]["options"]["path"]
    assert folder in mounts, (folder, mounts)
    dashboards = sorted((ROOT / mounts[folder]).glob("*.json"))
    assert [d.name for d in dashboards] == ["kindling.json"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{folder}/kindling.json"
    dashboard = json.loads(dashboards[0].read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {source["uid"]}
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert {"prometheus-data", "grafana-data"} <= set(compose["volumes"])


def _exported_names() -> set[str]:
    from workers.metrics import Metrics

    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"],
                    "info": ["_info"]}.get(family.type, [])
        names.update(family.name + s for s in suffixes)
    return names


def test_dashboard_panels_query_metrics_the_worker_exports() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/kindling.json").read_text())
    exported = _exported_names()
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", []))
             for p in dashboard["panels"]}
    used = {m for e in exprs.values() for m in re.findall(r"\bkindling_[a-z_]+", e)}
    assert used and used <= exported, sorted(used - exported)
    want = {  # what an operator watches, by the metric each panel must read
        "events/s": "kindling_events_total", "lag": "kindling_consumer_lag",
        "batch latency": "kindling_batch_seconds_bucket",
        "dead letters": "kindling_dead_letters_total", "model version": "kindling_model_info",
    }
    for what, metric in want.items():
        assert any(metric in e for e in exprs.values()), what
    lift = [e for e in exprs.values() if 'list="model"' in e and 'list="popularity"' in e]
    assert lift and all("by (bucket)" in e for e in lift), "online hit@K lift by bucket"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {m for e in exprs.values() for m in re.findall(r"\$(\w+)", e)} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "kindling"
