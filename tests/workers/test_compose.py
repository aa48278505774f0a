"""docker-compose.yml: a KRaft Kafka and two workers whose KINDLING_* settings are real."""

from __future__ import annotations

import base64
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
    assert {"kafka", *WORKERS} <= set(compose["services"])


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


def test_dockerfile_builds_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert text.startswith("FROM python:3.11")
    assert "pip install torch==" in text and "pip install ." in text
    assert "download.pytorch.org" not in text
    assert text.index("pip install torch==") < text.index("pip install .")
