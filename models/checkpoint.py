"""Checkpoints without pickle: ``model.safetensors`` (tensors) + ``meta.json`` (everything else).

``meta.json`` holds the learner's registry name, its :class:`~models.base.LearnerConfig`, the
vocabulary (item ids in id-embedding row order), a version string and free-form metadata such as
metrics. :func:`load` rebuilds the learner by registry name from the config and only then loads
the tensors, so a checkpoint can never execute code; shapes are checked one by one with a clear
error before anything is copied.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from models.base import Learner, LearnerConfig, create

WEIGHTS = "model.safetensors"
META = "meta.json"
FORMAT_VERSION = 1
# meta.json holds the vocabulary (about 10-30 bytes per item id): 256 MiB is millions of items,
# and refuses to parse a corrupt or hostile multi-gigabyte file into memory.
MAX_META_BYTES = 256 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint is incomplete or does not match the learner its config describes."""


def save(
    learner: Learner,
    directory: str | Path,
    *,
    vocab: list[str],
    version: str,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``learner`` to ``directory`` (created if needed) and return the directory.

    Parameters
    ----------
    learner : Learner
        A registered learner.
    directory : str or Path
        Target directory; existing files of the same name are overwritten.
    vocab : list of str
        Item ids in id-embedding row order (``len(vocab)`` must equal ``config.n_items``).
    version : str
        Model version label.
    metadata : dict, optional
        JSON-serialisable extras (metrics, training report, data window, ...).
    """
    if len(vocab) != learner.config.n_items:
        raise CheckpointError(
            f"vocab has {len(vocab)} ids but config.n_items = {learner.config.n_items}"
        )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # contiguous clones: safetensors refuses views/shared storage (e.g. expanded tensors)
    tensors = {k: v.detach().contiguous().clone() for k, v in learner.state_dict().items()}
    meta = {
        "format": FORMAT_VERSION,
        "learner": learner.name,
        "config": dataclasses.asdict(learner.config),
        "vocab": list(vocab),
        "version": version,
        "metadata": metadata or {},
    }
    # write meta last: a directory with meta.json present has complete weights
    save_file(tensors, str(out / WEIGHTS), metadata={"learner": learner.name, "version": version})
    (out / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return out


def load(directory: str | Path) -> tuple[Learner, list[str], dict[str, Any]]:
    """Rebuild a learner from ``directory``.

    Returns
    -------
    tuple
        ``(learner, vocab, meta)``; the learner is in eval mode.

    Raises
    ------
    CheckpointError
        Missing files, unknown keys, missing keys or any tensor whose shape differs from what the
        stored config builds.
    """
    d = Path(directory)
    if not (d / META).is_file() or not (d / WEIGHTS).is_file():
        raise CheckpointError(f"{d} is not a checkpoint (need {META} and {WEIGHTS})")
    size = (d / META).stat().st_size
    if size > MAX_META_BYTES:
        raise CheckpointError(f"{d / META} is {size} bytes, over the {MAX_META_BYTES}-byte limit")
    meta = json.loads((d / META).read_text())
    config = LearnerConfig(**meta["config"])
    learner = create(meta["learner"], config)
    tensors = load_file(str(d / WEIGHTS))
    expected = learner.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {d} does not match learner {meta['learner']!r}: "
            f"missing {missing}, unexpected {unexpected}"
        )
    bad = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(f"shape mismatch in {d}: " + "; ".join(bad))
    learner.load_state_dict(tensors, strict=True)
    learner.eval()
    vocab = list(meta["vocab"])
    if len(vocab) != config.n_items:
        raise CheckpointError(f"vocab has {len(vocab)} ids but config.n_items = {config.n_items}")
    return learner, vocab, meta


__all__ = ["CheckpointError", "load", "save"]
