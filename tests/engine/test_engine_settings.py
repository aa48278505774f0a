"""Settings: typed, validated, from defaults, ``KINDLING_*`` env vars and overrides.

Every field has a case in :data:`CASES` (a test fails when a field has none): a good raw value
and the typed value it must become, and raw values that must be refused with a message naming the
variable (and, for a choice, the allowed values). ``tests/workers/test_workers_flags.py`` runs the
same cases through the command-line flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.settings import Settings

Raw = str | Callable[[Path], str]  # a raw value, or one built in a test's tmp_path


@dataclass(frozen=True)
class Case:
    good: Raw
    want: Any  # the typed value (or a callable of tmp_path giving it)
    bad: tuple[Raw, ...] = ()
    allowed: tuple[str, ...] = ()  # for a choice: every allowed value must be named on error
    extra: dict[str, str] = field(default_factory=dict)  # other settings the good value needs


BOOL_BAD = ("maybe", "", "2", "enabled")


def _bool(default: bool) -> Case:
    # the good value is the opposite of the default, spelled as an operator would
    return Case("false" if default else "true", not default, BOOL_BAD)


def _dir(tmp: Path) -> str:
    (tmp / "d").mkdir(exist_ok=True)
    return str(tmp / "d")


def _file(tmp: Path) -> str:
    (tmp / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    return str(tmp / "ca.pem")


def _checkpoint(tmp: Path) -> str:
    (tmp / "v1").mkdir(exist_ok=True)
    (tmp / "v1" / "meta.json").write_text("{}")
    return str(tmp / "v1")


def _missing(tmp: Path) -> str:
    return str(tmp / "no-such-thing")


def _a_file_not_dir(tmp: Path) -> str:
    return _file(tmp)


CASES: dict[str, Case] = {
    # Kafka
    "broker": Case("kafka://k1:9093;k2:9094", "kafka://k1:9093;k2:9094",
                   ("k1:9092", "http://k1:9092", "kafka://k1:port", "kafka://k1:70000", "")),
    "topic_prefix": Case("prod.reco.", "prod.reco.", ("bad prefix", "a/b", "x" * 250)),
    "partitions": Case("8", 8, ("0", "-1", "four", "1.5")),
    "app_id": Case("reco-eu_1", "reco-eu_1", ("", "two words", "a/b")),
    "session_timeout_s": Case("30", 30.0, ("0", "-1", "soon", "nan"),
                              extra={"KINDLING_HEARTBEAT_INTERVAL_S": "3"}),
    "heartbeat_interval_s": Case("0.5", 0.5, ("0", "-2", "inf")),
    "rebalance_timeout_s": Case("20", 20.0, ("0", "x")),
    "max_poll_interval_s": Case("60", 60.0, ("0", "-5")),
    "recovery_consistency_check": _bool(True),
    "fetch_max_wait_ms": Case("100", 100, ("-1", "10.5")),
    "producer_linger_ms": Case("0", 0, ("-1", "x")),
    "producer_max_batch_size": Case("65536", 65536, ("0", "-1")),
    "producer_idempotence": _bool(True),
    "security_protocol": Case("SSL", "SSL", ("TLS", "ssl_plain"),
                              ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")),
    "sasl_mechanism": Case("PLAIN", "PLAIN", ("PLAINTEXT", "GSSAPI"),
                           ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
                           extra={"KINDLING_SECURITY_PROTOCOL": "SASL_SSL"}),
    "sasl_username": Case("svc", "svc"),
    "sasl_password": Case("s3cret", "s3cret"),
    "ssl_cafile": Case(_file, _file, (_missing, _dir)),
    # Embedded broker storage
    "broker_storage": Case("s3://kindling-broker/", "s3://kindling-broker/",
                           ("s3://", "s3://Bad_Bucket/", "file:///tmp/x", "memory://", "")),
    "s3_endpoint": Case("http://127.0.0.1:9000", "http://127.0.0.1:9000",
                        ("127.0.0.1:9000", "ftp://host", "http://", "LOCAL")),
    "s3_region": Case("eu-west-3", "eu-west-3", ("", "EU West", "eu_west_3")),
    # State
    "data_dir": Case(_dir, _dir, ("", _a_file_not_dir)),
    "support_capacity": Case("12", 12, ("0", "-3")),
    "dedup_window": Case("0", 0, ("-1",)),
    "offset_dedup": _bool(True),
    # Serving
    "learner": Case("proto", "proto", ("fomamll", "")),
    "itemitem_neighbours": Case("32", 32, ("0", "-1", "many")),
    "itemitem_max_items": Case("2000", 2000, ("0", "1.5")),
    "transfer_source_domain": Case("book", "book"),
    "transfer_target_domain": Case("music", "music"),
    "model_dir": Case(_checkpoint, _checkpoint, (_missing, _dir)),
    "top_k": Case("20", 20, ("0", "-1", "ten")),
    "inner_steps": Case("0", 0, ("-1",)),
    "batch_max": Case("64", 64, ("0",)),
    "batch_within_s": Case("0.05", 0.05, ("0", "-0.1")),
    "stream_buffer_events": Case("1024", 1024, ("0",)),
    "pipeline": Case("echo", "echo", ("fast", "Full"), ("full", "echo", "state")),
    "gc_freeze": _bool(True),
    "event_loop": Case("asyncio", "asyncio", ("tokio", "", "uv loop"), ("uvloop", "asyncio")),
    "rating_low": Case("1", 1.0, ("6", "x"), extra={"KINDLING_RATING_HIGH": "5"}),
    "rating_high": Case("10", 10.0, ("-1", "0")),
    "recency_online": _bool(False),
    "feature_dim": Case("32", 32, ("0",)),
    "attribute_dim": Case("16", 16, ("0",)),
    "encoder": Case("minilm", "minilm", ("bert", _missing), ("hashing", "minilm")),
    "blend": Case("learned", "learned", ("learnt", "Fixed"), ("none", "fixed", "learned")),
    "seed": Case("42", 42, ("-1", "x")),
    "torch_threads": Case("2", 2, ("0",)),
    # Exploration
    "policy": Case("linucb", "linucb", ("greedy", "UCB"),
                   ("none", "epsilon", "ucb", "thompson", "thompson-gaussian", "linucb", "lints")),
    "explore_slots": Case("2", 2, ("-1", "11")),
    "explore_epsilon": Case("0.1", 0.1, ("-0.1", "1.5")),
    "explore_decay": Case("5", 5.0, ("0", "-1")),
    "explore_pool": Case("50", 50, ("0",)),
    # Retraining
    "retrain_interval_s": Case("600", 600.0, ("-1", "hourly")),
    "retrain_steps": Case("0", 0, ("-1",)),
    "retrain_min_users": Case("5", 5, ("0",)),
    "retrain_max_users": Case("100", 100, ("0",)),
    "retrain_tolerance": Case("0.01", 0.01, ("nan", "x")),
    # Operations
    "web_port": Case("8080", 8080, ("0", "65536")),
    "web_enabled": _bool(False),
    "metrics_port": Case("9108", 9108, ("-1", "65536")),
    "metrics_host": Case("127.0.0.1", "127.0.0.1", ("",)),
    "log_format": Case("json", "json", ("xml",), ("text", "json")),
    "log_level": Case("WARNING", "warning", ("loud",),
                      ("debug", "info", "warning", "error", "critical")),
    "online_hits_users": Case("0", 0, ("-1", "all")),
}


def _names() -> set[str]:
    return {n.removeprefix("KINDLING_").lower() for n in Settings.env_names()}


def _env(name: str) -> str:
    return "KINDLING_" + name.upper()


def _raw(value: Raw, tmp: Path) -> str:
    return value(tmp) if callable(value) else value


def test_every_field_has_a_case() -> None:
    missing = sorted(_names() - set(CASES))
    assert not missing, f"add a case to tests/engine/test_engine_settings.py for {missing}"
    assert not set(CASES) - _names(), sorted(set(CASES) - _names())


def test_defaults_without_env() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.broker == "kafka://127.0.0.1:9092"
    assert s.support_capacity == 20 and s.top_k == 10
    assert s.web_enabled is False and s.gc_freeze is True and s.recency_online is False
    assert s.topic("events") == "kindling.events"


@pytest.mark.parametrize("name", sorted(CASES))
def test_env_value_is_typed(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    s = Settings.from_env({_env(name): _raw(case.good, tmp_path), **case.extra})
    want = case.want(tmp_path) if callable(case.want) else case.want
    got = getattr(s, name)
    assert got == want and type(got) is type(want), (name, got, want)


@pytest.mark.parametrize(
    "name, raw", [(n, bad) for n in sorted(CASES) for bad in CASES[n].bad],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", "raw"),
)
def test_bad_env_value_is_refused_naming_the_variable(name: str, raw: Raw,
                                                      tmp_path: Path) -> None:
    value = _raw(raw, tmp_path)
    with pytest.raises(ValueError) as info:
        Settings.from_env({_env(name): value, **CASES[name].extra})
    message = str(info.value)
    assert _env(name) in message and repr(value) in message, message
    for allowed in CASES[name].allowed:
        assert repr(allowed) in message, (allowed, message)


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.bad == BOOL_BAD))
@pytest.mark.parametrize("raw, expected", [
    ("true", True), ("false", False), ("True", True), ("FALSE", False), ("1", True), ("0", False),
    ("yes", True), ("no", False), ("on", True), ("off", False),
])
def test_every_bool_parses_both_ways(name: str, raw: str, expected: bool) -> None:
    assert getattr(Settings.from_env({_env(name): raw}), name) is expected


def test_unknown_choice_does_not_fall_back() -> None:
    with pytest.raises(ValueError, match="KINDLING_BLEND='learnt'.*'none', 'fixed' or 'learned'"):
        Settings.from_env({"KINDLING_BLEND": "learnt"})


def test_constructed_settings_are_validated_too() -> None:
    with pytest.raises(ValueError, match="blend"):
        Settings(blend="learnt")
    with pytest.raises(ValueError, match="top_k"):
        Settings().replace(top_k=0)


@pytest.mark.parametrize("env, words", [
    ({"KINDLING_RATING_LOW": "5", "KINDLING_RATING_HIGH": "5"}, ["KINDLING_RATING_LOW", "below"]),
    ({"KINDLING_EXPLORE_SLOTS": "4", "KINDLING_TOP_K": "3"},
     ["KINDLING_EXPLORE_SLOTS", "KINDLING_TOP_K"]),
    ({"KINDLING_HEARTBEAT_INTERVAL_S": "10", "KINDLING_SESSION_TIMEOUT_S": "10"},
     ["KINDLING_HEARTBEAT_INTERVAL_S", "session"]),
    ({"KINDLING_SECURITY_PROTOCOL": "SASL_SSL"}, ["KINDLING_SASL_MECHANISM"]),
    ({"KINDLING_SASL_MECHANISM": "PLAIN"}, ["KINDLING_SECURITY_PROTOCOL", "SASL"]),
])
def test_settings_that_only_make_sense_together(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env(env)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_all_bad_values_are_reported_at_once() -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({"KINDLING_TOP_K": "0", "KINDLING_BLEND": "learnt"})
    assert "KINDLING_TOP_K" in str(info.value) and "KINDLING_BLEND" in str(info.value)


def test_overrides_beat_env_and_none_is_ignored() -> None:
    env = {"KINDLING_TOP_K": "7", "KINDLING_APP_ID": "from-env"}
    s = Settings.from_env(env, top_k=3, app_id=None)
    assert s.top_k == 3 and s.app_id == "from-env"


def test_unknown_override_rejected() -> None:
    with pytest.raises(TypeError, match="no_such_setting"):
        Settings.from_env({}, no_such_setting=1)
    with pytest.raises(TypeError, match="no_such_setting"):
        Settings().replace(no_such_setting=1)


def test_env_names_cover_every_field() -> None:
    names = Settings.env_names()
    assert len(names) == len(set(names)) == len(CASES)
    assert "KINDLING_BROKER" in names and "KINDLING_SASL_PASSWORD" in names
    assert all(n.startswith("KINDLING_") and n == n.upper() for n in names)


def test_public_masks_password() -> None:
    s = Settings.from_env({"KINDLING_SASL_PASSWORD": "hunter2", "KINDLING_SASL_USERNAME": "bob"})
    assert s.sasl_password == "hunter2"
    pub = s.public()
    assert pub["sasl_password"] == "***" and pub["sasl_username"] == "bob"
    assert "hunter2" not in repr(pub) and "hunter2" not in repr(s)
    assert Settings().public()["sasl_password"] == ""


def test_replace_returns_new_settings() -> None:
    s = Settings()
    t = s.replace(top_k=1)
    assert t.top_k == 1 and s.top_k == 10


def test_child_env_round_trips(tmp_path: Path) -> None:
    """A child process rebuilds exactly the parent's settings from the env it is given."""
    s = Settings(gc_freeze=False, recency_online=True, batch_within_s=0.02, blend="fixed",
                 model_dir=_checkpoint(tmp_path), sasl_username="svc")
    env = {k: v for k, v in s.child_env().items() if k.startswith("KINDLING_")}
    assert Settings.from_env(env) == s


def test_plain_construction_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Settings()`` is the defaults (code compares against it); only ``from_env`` reads env."""
    monkeypatch.setenv("KINDLING_TOP_K", "3")
    assert Settings().top_k == 10
    assert Settings.from_env().top_k == 3


# ------------------------------------------------------------------ the same through the CLI
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _settings_of(argv: list[str]) -> Settings:
    from workers.cli import build_parser, settings_from

    return settings_from(build_parser(argv[0]).parse_args(argv))


FLAG_CASES = sorted(n for n in CASES if n != "sasl_password")  # secrets only via env


@pytest.mark.parametrize("name", FLAG_CASES)
def test_flag_value_is_typed(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    argv = ["worker", _flag(name), _raw(case.good, tmp_path)]
    for env_name, value in case.extra.items():
        argv += [_flag(env_name.removeprefix("KINDLING_").lower()), value]
    got = getattr(_settings_of(argv), name)
    want = case.want(tmp_path) if callable(case.want) else case.want
    assert got == want and type(got) is type(want), (name, got, want)


@pytest.mark.parametrize(
    "name, raw", [(n, bad) for n in FLAG_CASES for bad in CASES[n].bad],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", "raw"),
)
def test_bad_flag_value_is_refused_naming_the_flag(name: str, raw: Raw, tmp_path: Path) -> None:
    value = _raw(raw, tmp_path)
    argv = ["worker", _flag(name), value]
    for env_name, extra in CASES[name].extra.items():
        argv += [_flag(env_name.removeprefix("KINDLING_").lower()), extra]
    with pytest.raises(ValueError) as info:
        _settings_of(argv)
    message = str(info.value)
    assert _flag(name) in message and repr(value) in message, message
    for allowed in CASES[name].allowed:
        assert repr(allowed) in message, (allowed, message)


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.bad == BOOL_BAD))
@pytest.mark.parametrize("raw, expected", [("false", False), ("true", True), ("off", False),
                                           ("1", True), ("no", False)])
def test_every_bool_flag_parses_both_ways(name: str, raw: str, expected: bool) -> None:
    assert getattr(_settings_of(["worker", _flag(name), raw]), name) is expected


def test_gc_freeze_false_turns_it_off() -> None:
    assert _settings_of(["worker", "--gc-freeze", "false"]).gc_freeze is False
    assert _settings_of(["worker", "--recency-online", "false"]).recency_online is False
    assert _settings_of(["worker"]).gc_freeze is True


def test_flag_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINDLING_TOP_K", "7")
    monkeypatch.setenv("KINDLING_GC_FREEZE", "false")
    s = _settings_of(["worker", "--top-k", "3"])
    assert s.top_k == 3 and s.gc_freeze is False


def test_password_flag_does_not_exist() -> None:
    with pytest.raises(SystemExit):
        _settings_of(["worker", "--sasl-password", "hunter2"])


def test_bad_setting_exits_with_a_message_not_a_traceback(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.cli import main

    monkeypatch.delenv("KINDLING_BLEND", raising=False)
    assert main(["worker", "--blend", "learnt"]) == 2
    err = capsys.readouterr().err
    assert "--blend='learnt'" in err and "'none', 'fixed' or 'learned'" in err
    assert "Traceback" not in err


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from workers.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser(argv[0]).parse_args(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def test_offline_command_help_shows_its_own_options_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["replay", "--help"], capsys)
    assert "--protocol" in text and "--via-kafka" in text
    assert "--gc-freeze" not in text and "--batch-within-s" not in text
    assert "--help-settings" in text
    assert len(text.splitlines()) < 45, text


def test_help_settings_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["replay", "--help-settings"], capsys)
    for name in FLAG_CASES:
        assert _flag(name) + " " in text, name
    assert "--sasl-password" not in text and "KINDLING_SASL_PASSWORD" in text
    assert "--protocol" not in text


def test_worker_help_lists_the_settings_in_one_group(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["worker", "--help"], capsys)
    assert "worker settings" in text
    for name in FLAG_CASES:
        assert _flag(name) + " " in text, name


def test_defaults_are_valid() -> None:
    """Defaults are not re-validated on every construction: check them here, every one given."""
    defaults = Settings().model_dump()
    assert Settings(**defaults) == Settings()


def test_configuration_reference_is_current() -> None:
    from engine.settings import reference_markdown

    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert doc.read_text(encoding="utf-8") == reference_markdown(), (
        "docs/configuration.md is stale: python -m engine.settings > docs/configuration.md")
