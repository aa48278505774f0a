"""Security: no code execution from data, secrets only via env and never printed, size limits."""

from __future__ import annotations

import ast
import json
import ssl
from pathlib import Path
from types import SimpleNamespace

import faust
import pytest

from engine.settings import Settings
from schemas import SchemaError, decode_interaction, decode_item, decode_user
from schemas.wire import MAX_ID_CHARS, MAX_PAYLOAD_BYTES, MAX_TEXT_CHARS
from streams.topics import client_config

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "evaluation", "models", "schemas", "streams", "workers")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "joblib",
                  "cloudpickle"}
SECRET = "s3cr3t-hunter2"


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every place ``source`` could run code from data: pickle-family imports, eval/exec,
    ``torch.load`` without ``weights_only=True``, ``yaml.load``, ``numpy.load(allow_pickle=True)``.
    """
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names
                      if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNSAFE_MODULES:
                found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else None
            attr = func.attr if isinstance(func, ast.Attribute) else None
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(
                func.value, ast.Name) else None
            kwargs = {k.arg: k.value for k in node.keywords}
            if name in {"eval", "exec", "__import__"}:
                found.append(f"{where} {name}()")
            elif attr == "load" and owner == "torch":
                weights_only = kwargs.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append(f"{where} torch.load without weights_only=True")
            elif attr in {"load", "unsafe_load", "full_load"} and owner == "yaml":
                found.append(f"{where} yaml.{attr}")
            elif attr == "load" and owner in {"np", "numpy"}:
                allow = kwargs.get("allow_pickle")
                if isinstance(allow, ast.Constant) and allow.value is True:
                    found.append(f"{where} numpy.load(allow_pickle=True)")
    return found


def test_scanner_catches_what_it_claims_to() -> None:
    bad = """
import pickle
from dill import loads
import torch, yaml, numpy as np
eval("1")
exec("x = 1")
torch.load("m.pt")
torch.load("m.pt", weights_only=False)
yaml.load(open("c"))
np.load("a.npy", allow_pickle=True)
"""
    assert [hit.split(" ", 1)[0] for hit in unsafe_calls(bad)] == [
        f"<src>:{line}" for line in range(2, 11) if line != 4
    ]
    good = """
import torch, json
torch.load("m.pt", weights_only=True)
model.eval()
json.loads("{}")
"""
    assert unsafe_calls(good) == []


def test_package_code_never_unpickles_or_evals() -> None:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 30
    found = [hit for f in files for hit in unsafe_calls(f.read_text(encoding="utf-8"),
                                                          str(f.relative_to(ROOT)))]
    assert found == []


# ------------------------------------------------------------------------------ secrets


@pytest.fixture
def cafile(tmp_path) -> str:
    path = tmp_path / "ca.pem"  # the setting must name an existing file
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


def _secret_settings(cafile: str) -> Settings:
    return Settings.from_env({
        "KINDLING_SECURITY_PROTOCOL": "SASL_SSL", "KINDLING_SASL_MECHANISM": "SCRAM-SHA-512",
        "KINDLING_SASL_USERNAME": "svc", "KINDLING_SASL_PASSWORD": SECRET,
        "KINDLING_SSL_CAFILE": cafile,
    })


def test_password_not_in_repr_str_or_public(cafile: str) -> None:
    s = _secret_settings(cafile)
    assert s.sasl_password == SECRET
    assert SECRET not in repr(s) and SECRET not in str(s)
    assert SECRET not in json.dumps(s.public()) and s.public()["sasl_password"] == "***"
    assert SECRET not in repr(s.replace(top_k=3))


def test_password_is_never_a_cli_flag() -> None:
    from workers.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--sasl-password", SECRET])
    args = parser.parse_args(["worker", "--sasl-username", "svc"])
    assert not any(k.endswith("sasl_password") for k in vars(args))


def test_worker_process_does_not_write_the_password_into_env(monkeypatch, cafile) -> None:
    # The child inherits KINDLING_SASL_PASSWORD from the parent's env (the only way in), but
    # the helper never copies it out of a Settings object.
    from ops.process import WorkerProcess

    monkeypatch.delenv("KINDLING_SASL_PASSWORD", raising=False)
    env = WorkerProcess(_secret_settings(cafile), "/tmp/unused.log").env()
    assert SECRET not in env.values()
    assert env["KINDLING_SASL_USERNAME"] == "svc"


def test_sasl_ssl_pass_through_to_kafka_clients(cafile: str) -> None:
    conf = client_config(_secret_settings(cafile))
    assert conf["security_protocol"] == "SASL_SSL"
    assert conf["sasl_mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl_plain_username"] == "svc" and conf["sasl_plain_password"] == SECRET
    assert conf["ssl_cafile"] == cafile
    plain = client_config(Settings())
    assert set(plain) == {"bootstrap_servers"}


def test_sasl_ssl_pass_through_to_faust(cafile: str) -> None:
    from workers.app import Kindling

    ctx = ssl.create_default_context()
    fake = SimpleNamespace(settings=_secret_settings(cafile), _ssl_context=lambda: ctx)
    creds = Kindling._credentials(fake)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.username == "svc" and creds.password == SECRET
    assert creds.ssl_context is ctx
    fake.settings = Settings(security_protocol="SSL")
    assert isinstance(Kindling._credentials(fake), faust.SSLCredentials)
    fake.settings = Settings()
    assert Kindling._credentials(fake) is None


# ------------------------------------------------------------------------------ size limits


def _event(**extra: object) -> bytes:
    doc = {"event_id": "e", "user_id": "u", "item_id": "i", "kind": "view", **extra}
    return json.dumps(doc).encode()


def test_wire_payload_limit() -> None:
    pad = MAX_PAYLOAD_BYTES - len(_event(context={"p": ""})) - 10
    assert decode_interaction(_event(context={"p": "x" * pad}))
    with pytest.raises(SchemaError, match="over the"):
        decode_interaction(_event(context={"p": "x" * (pad + 20)}))


def test_id_and_text_limits() -> None:
    assert decode_interaction(_event(item_id="i" * MAX_ID_CHARS)).item_id
    with pytest.raises(SchemaError, match="longer than"):
        decode_interaction(_event(item_id="i" * (MAX_ID_CHARS + 1)))
    with pytest.raises(SchemaError, match="longer than"):
        decode_user(json.dumps({"user_id": "u" * (MAX_ID_CHARS + 1)}).encode())
    assert decode_item(json.dumps({"item_id": "i", "text": "w" * MAX_TEXT_CHARS}).encode())
    with pytest.raises(SchemaError) as info:
        decode_item(json.dumps({"item_id": "i", "text": "w" * (MAX_TEXT_CHARS + 1)}).encode())
    assert info.value.field == "text"


def test_readers_apply_wire_limits(tmp_path: Path) -> None:
    from streams.sources import read_log

    rows = [
        {"user_id": "u1", "item_id": "i" * (MAX_ID_CHARS + 1), "value": 4, "ts": 1},
        {"user_id": "u\ud800", "item_id": "i", "value": 4, "ts": 2},
        {"user_id": "u2", "item_id": "i", "value": 4, "ts": 3, "pad": "x" * MAX_PAYLOAD_BYTES},
        {"user_id": "u3", "item_id": "i", "value": 4, "ts": 4},
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    read = read_log(path)
    assert [e.user_id for e in read.events] == ["u3"]
    reasons = " | ".join(read.stats.skipped)
    assert "longer than" in reasons and "surrogate" in reasons and "too long" in reasons


def test_checkpoint_meta_size_limit(tmp_path: Path, monkeypatch) -> None:
    from models import checkpoint

    (tmp_path / checkpoint.META).write_text(json.dumps({"pad": "x" * 2000}))
    (tmp_path / checkpoint.WEIGHTS).write_bytes(b"")
    monkeypatch.setattr(checkpoint, "MAX_META_BYTES", 1000)
    with pytest.raises(checkpoint.CheckpointError, match="over the"):
        checkpoint.load(tmp_path)
