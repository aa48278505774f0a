"""SASRec (Kang & McAuley 2018), sized for a CPU: the sequential baseline of the replay.

A causal self-attention encoder reads a user's items oldest → newest; the hidden state at the
last position scores every item by a dot product with the (shared) item embeddings. Training is
next-item prediction at every position with a full softmax over the catalog (cross-entropy, which
trains SASRec far better than the original one-negative BCE: Klenitskiy & Vasilev, RecSys 2023),
on sliding windows of ``max_len`` events of the training users.

Pure torch: sequences of item rows in, scores out. The replay adapter is
:class:`evaluation.baselines.SASRecRanker`.

Examples
--------
>>> model = SASRec(n_items=5, dim=8, max_len=4, seed=0)
>>> model.scores([torch.tensor([0, 1]), torch.tensor([], dtype=torch.long)]).shape
torch.Size([2, 5])
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn


class SASRec(nn.Module):
    """Item embeddings + learned positions + ``layers`` causal transformer blocks."""

    def __init__(
        self,
        n_items: int,
        *,
        dim: int = 48,
        max_len: int = 50,
        layers: int = 2,
        heads: int = 2,
        dropout: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)  # row 0: padding
        self.positions = nn.Embedding(max_len, dim)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.items.weight, std=1.0 / math.sqrt(dim))
        with torch.no_grad():
            self.items.weight[0].zero_()
        torch.random.set_rng_state(gen_state)
        causal = torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def hidden(self, padded: Tensor) -> Tensor:
        """(B, L) item ids shifted by one (0 = padding, left-padded) -> (B, L, dim)."""
        length = padded.shape[1]
        x = self.items(padded) * math.sqrt(self.items.embedding_dim)
        x = self.dropout(x + self.positions.weight[-length:])
        # Query q may attend to key k <= q that is an item; and always to itself, so that a
        # padding position (or a row of padding) never has every key masked (NaN).
        blocked = self.causal[-length:, -length:] | (padded == 0)[:, None, :]
        blocked = blocked & ~torch.eye(length, dtype=torch.bool)
        heads = self.encoder.layers[0].self_attn.num_heads
        h = self.encoder(x, mask=blocked.repeat_interleave(heads, dim=0))
        return self.norm(h)

    def logits(self, h: Tensor) -> Tensor:
        return h @ self.items.weight[1:].T

    def pad(self, sequences: Sequence[Tensor]) -> Tensor:
        """Left-pad the last ``max_len`` items of each sequence, as ids shifted by one."""
        out = torch.zeros(len(sequences), self.max_len, dtype=torch.long)
        for b, seq in enumerate(sequences):
            tail = seq[-self.max_len:]
            if tail.numel():
                out[b, self.max_len - tail.numel():] = tail + 1
        return out

    @torch.inference_mode()
    def scores(self, sequences: Sequence[Tensor]) -> Tensor:
        """(B, n_items) next-item scores after each sequence of item rows (oldest first)."""
        was = self.training
        self.eval()
        try:
            return self.logits(self.hidden(self.pad(sequences))[:, -1])
        finally:
            self.train(was)


def windows(sequences: Sequence[Tensor], max_len: int) -> list[Tensor]:
    """Training windows: each sequence cut into consecutive pieces of at most ``max_len + 1``
    events (inputs are the first ``max_len``, targets the next ones), newest piece last."""
    out = []
    for seq in sequences:
        n = seq.numel()
        if n < 2:
            continue
        for end in range(n, 1, -max_len):
            out.append(seq[max(0, end - max_len - 1): end])
    return out


class Trainer:
    """Next-item training with a full softmax, resumable: :meth:`train_to` ``e`` epochs gives
    exactly the model a fresh run of ``e`` epochs gives (the optimiser and the shuffling RNG
    carry on), so a tuner can score 2, 4, 8... epochs with one run."""

    def __init__(self, model: SASRec, sequences: Sequence[Tensor], *, batch_size: int = 128,
                 lr: float = 2e-3, seed: int = 0) -> None:
        self.model = model
        self.pieces = windows(sequences, model.max_len)
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.torch_rng = torch.random.get_rng_state()  # dropout masks, carried between calls
        torch.random.set_rng_state(gen_state)
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)
        self.epochs = 0
        self.losses: list[float] = []
        self.seconds = 0.0

    def train_to(self, epochs: int) -> dict[str, float]:
        """Train until ``epochs`` epochs are done in all (no-op if already there)."""
        t0 = time.perf_counter()
        outer = torch.random.get_rng_state()
        torch.random.set_rng_state(self.torch_rng)
        try:
            while self.epochs < epochs and self.pieces:
                self.losses.append(self._epoch())
                self.epochs += 1
        finally:
            self.torch_rng = torch.random.get_rng_state()
            torch.random.set_rng_state(outer)
            self.model.eval()
        self.seconds += time.perf_counter() - t0
        return {"epochs": float(self.epochs),
                "loss_first": self.losses[0] if self.losses else math.nan,
                "loss_last": self.losses[-1] if self.losses else math.nan,
                "seconds": self.seconds}

    def _epoch(self) -> float:
        model = self.model
        model.train()
        total, count = 0.0, 0
        order = self.rng.permutation(len(self.pieces))
        for start in range(0, len(self.pieces), self.batch_size):
            chunk = [self.pieces[i] for i in order[start: start + self.batch_size]]
            inputs = model.pad([p[:-1] for p in chunk])
            targets = model.pad([p[1:] for p in chunk])  # shifted ids, 0 = no target
            h = model.hidden(inputs)
            valid = targets > 0
            loss = nn.functional.cross_entropy(model.logits(h[valid]), targets[valid] - 1)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            total += float(loss.detach()) * int(valid.sum())
            count += int(valid.sum())
        return total / max(count, 1)


def train_sasrec(
    model: SASRec,
    sequences: Sequence[Tensor],
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``model`` for ``epochs`` epochs (see :class:`Trainer`); returns the loss of the
    first and last epochs and the seconds spent."""
    return Trainer(model, sequences, batch_size=batch_size, lr=lr, seed=seed).train_to(epochs)
