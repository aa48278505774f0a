"""Settings: defaults, KINDLING_* env overrides with coercion, errors, overrides, masking."""

from __future__ import annotations

import dataclasses

import pytest

from engine.settings import Settings


def test_defaults_without_env() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.broker == "kafka://127.0.0.1:9092"
    assert s.support_capacity == 20 and s.top_k == 10
    assert s.web_enabled is False
    assert s.topic("events") == "kindling.events"


def test_env_overrides_with_coercion() -> None:
    env = {
        "KINDLING_BROKER": "kafka://kafka:9092",
        "KINDLING_PARTITIONS": "8",
        "KINDLING_BATCH_WITHIN_S": "0.5",
        "KINDLING_WEB_ENABLED": "true",
        "KINDLING_LOG_LEVEL": "debug",
        "KINDLING_TOP_K": " 7 ",
        "UNRELATED": "x",
    }
    s = Settings.from_env(env)
    assert s.broker == "kafka://kafka:9092"
    assert s.partitions == 8 and type(s.partitions) is int
    assert s.batch_within_s == 0.5 and type(s.batch_within_s) is float
    assert s.web_enabled is True
    assert s.log_level == "debug"
    assert s.top_k == 7


@pytest.mark.parametrize(
    "raw, expected",
    [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False), ("", False)],
)
def test_bool_coercion(raw: str, expected: bool) -> None:
    assert Settings.from_env({"KINDLING_WEB_ENABLED": raw}).web_enabled is expected


@pytest.mark.parametrize(
    "name, raw",
    [("KINDLING_PARTITIONS", "four"), ("KINDLING_TOP_K", "1.5"),
     ("KINDLING_RETRAIN_INTERVAL_S", "soon"), ("KINDLING_WEB_ENABLED", "maybe")],
)
def test_invalid_value_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({name: raw})
    assert name in str(info.value) and repr(raw) in str(info.value)


def test_overrides_beat_env_and_none_is_ignored() -> None:
    env = {"KINDLING_TOP_K": "7", "KINDLING_APP_ID": "from-env"}
    s = Settings.from_env(env, top_k=3, app_id=None)
    assert s.top_k == 3 and s.app_id == "from-env"


def test_unknown_override_rejected() -> None:
    with pytest.raises(TypeError, match="no_such_setting"):
        Settings.from_env({}, no_such_setting=1)


def test_env_names_cover_every_field() -> None:
    names = Settings.env_names()
    assert len(names) == len(dataclasses.fields(Settings))
    assert "KINDLING_BROKER" in names and "KINDLING_SASL_PASSWORD" in names
    assert all(n.startswith("KINDLING_") and n == n.upper() for n in names)


def test_public_masks_password() -> None:
    s = Settings.from_env({"KINDLING_SASL_PASSWORD": "hunter2", "KINDLING_SASL_USERNAME": "bob"})
    assert s.sasl_password == "hunter2"
    pub = s.public()
    assert pub["sasl_password"] == "***" and pub["sasl_username"] == "bob"
    assert "hunter2" not in repr(pub)
    assert Settings().public()["sasl_password"] == ""


def test_replace_returns_new_settings() -> None:
    s = Settings()
    t = s.replace(top_k=1)
    assert t.top_k == 1 and s.top_k == 10


def test_offset_dedup_switch_from_env_and_flag() -> None:
    import argparse

    from workers.cli import _add_settings_flags, settings_from

    assert Settings.from_env({}).offset_dedup is True
    assert Settings.from_env({"KINDLING_OFFSET_DEDUP": "false"}).offset_dedup is False
    parser = argparse.ArgumentParser()
    _add_settings_flags(parser)
    # a string "false" must not reach the bool field (it would be truthy)
    assert settings_from(parser.parse_args(["--offset-dedup", "false"])).offset_dedup is False
    assert settings_from(parser.parse_args(["--offset-dedup", "on"])).offset_dedup is True
