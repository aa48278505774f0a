"""safetensors + JSON checkpoints: round trip and rejection of mismatches."""

from __future__ import annotations

import json

import pytest
import torch

from models.base import REGISTRY, create
from models.checkpoint import CheckpointError, load, save


@pytest.mark.parametrize("name", ["fomaml", "proto", "sequence"])
def test_round_trip(name: str, planted, tmp_path) -> None:
    learner = create(name, planted.config())
    with torch.no_grad():  # make the weights differ from a fresh init
        for p in learner.parameters():
            p.add_(0.01 * torch.randn_like(p))
    vocab = [f"item{i}" for i in range(planted.config().n_items)]
    path = save(learner, tmp_path / "ckpt", vocab=vocab, version="v7", metadata={"ndcg": 0.5})
    assert (path / "model.safetensors").is_file() and (path / "meta.json").is_file()
    loaded, vocab2, meta = load(path)
    assert type(loaded) is REGISTRY[name] and vocab2 == vocab
    assert meta["version"] == "v7" and meta["metadata"] == {"ndcg": 0.5}
    assert loaded.config == learner.config
    for (k, v), (k2, v2) in zip(
        learner.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    prep, prep2 = learner.prepare(planted.bank), loaded.prepare(planted.bank)
    s1 = learner.score(learner.init_state(torch.zeros(2, 4)), prep)
    s2 = loaded.score(loaded.init_state(torch.zeros(2, 4)), prep2)
    assert torch.equal(s1, s2)


def test_shape_mismatch_rejected(planted, tmp_path) -> None:
    learner = create("fomaml", planted.config())
    vocab = [str(i) for i in range(planted.config().n_items)]
    path = save(learner, tmp_path / "c", vocab=vocab, version="1", metadata={})
    meta = json.loads((path / "meta.json").read_text())
    meta["config"]["dim"] = 8  # the stored tensors are dim 16
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load(path)


def test_vocab_length_checked(planted, tmp_path) -> None:
    learner = create("fomaml", planted.config())
    with pytest.raises(CheckpointError, match="vocab"):
        save(learner, tmp_path / "c", vocab=["a"], version="1", metadata={})


def test_missing_files(tmp_path) -> None:
    with pytest.raises(CheckpointError):
        load(tmp_path)


def test_no_pickle_in_module() -> None:
    import inspect

    import models.checkpoint as ck

    src = inspect.getsource(ck)
    assert "torch.load" not in src and "import pickle" not in src
