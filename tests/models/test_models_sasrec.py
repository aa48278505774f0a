"""SASRec: causal next-item prediction that learns a planted order, with no NaN from padding."""

from __future__ import annotations

import torch

from models.sasrec import SASRec, train_sasrec, windows


def test_windows_cover_every_transition_once() -> None:
    seq = torch.arange(12)
    pieces = windows([seq, torch.tensor([5])], max_len=4)  # a 1-event sequence has no target
    transitions = {(int(a), int(b)) for p in pieces for a, b in zip(p[:-1], p[1:], strict=True)}
    assert transitions == {(k, k + 1) for k in range(11)}
    assert all(len(p) <= 5 for p in pieces)


def test_learns_a_planted_successor_and_padding_is_harmless() -> None:
    """Item k is always followed by item (k + 1) mod 10: after a short prefix, the next item is
    the top score; an empty or 1-item history scores finitely."""
    g = torch.Generator().manual_seed(0)
    sequences = []
    for _ in range(60):
        start = int(torch.randint(0, 10, (1,), generator=g))
        length = int(torch.randint(3, 15, (1,), generator=g))
        sequences.append((torch.arange(start, start + length) % 10).long())
    model = SASRec(10, dim=16, max_len=8, dropout=0.0, seed=0)
    report = train_sasrec(model, sequences, epochs=30, batch_size=32, lr=5e-3, seed=0)
    assert report["loss_last"] < 0.5 * report["loss_first"]
    tests = [torch.tensor([3, 4]), torch.tensor([7, 8, 9]), torch.tensor([1])]
    scores = model.scores(tests + [torch.zeros(0, dtype=torch.long)])
    assert torch.isfinite(scores).all()
    assert scores[:3].argmax(1).tolist() == [5, 0, 2]


def test_resumed_training_is_the_same_model_as_one_run() -> None:
    from models.sasrec import Trainer

    g = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, 30, (12,), generator=g) for _ in range(40)]
    once = SASRec(30, dim=16, max_len=8, seed=1)
    train_sasrec(once, sequences, epochs=4, seed=2)
    resumed = SASRec(30, dim=16, max_len=8, seed=1)
    trainer = Trainer(resumed, sequences, seed=2)
    trainer.train_to(1)
    trainer.train_to(4)
    trainer.train_to(3)  # already past: nothing happens
    for a, b in zip(once.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
