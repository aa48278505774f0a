"""Cross-domain transfer learners: a user's source-domain history gives a target-domain state.

Every model here is a registered :class:`~models.base.Learner` (pure torch), so the worker, the
replay and ``kindling transfer`` drive them through the same ``prepare/init_state/adapt/score``
protocol as the single-domain learners. Domains are ``ItemBank.domains`` codes: ``0`` = source,
``1`` = target (the learner's ``config.extra["domains"] = [source, target]`` names them), ``-1`` =
any other domain (treated as source evidence).

Registry names and the transfer family each one implements
-----------------------------------------------------------
=================  ============================================================================
``cd-target``      target-only baseline: ignores source events (no transfer)
``cd-shared``      shared embeddings trained jointly on both domains — *parameter transfer*
                   (one item tower / user space for both domains)
``emcdr``          EMCDR: an MLP maps the source-domain user vector to the target space
``ptupcdr``        PTUPCDR: a meta network turns the user's source items into a per-user bridge
``cd-adversarial`` shared space + domain discriminator behind gradient reversal (aligned domains)
``lightgcn``       LightGCN propagation over the training user–item graph (both domains) with
                   ``torch.sparse`` — *relation transfer* (co-occurrence bridges via shared users)
``cd-graph``       the target popularity prior + one non-learned graph hop from the support
                   items through the training users, gated by the evidence mass, its few
                   hyper-parameters chosen on held-out training users (:mod:`.graph`) — the
                   served default for transfer: the learned ones over-fit the overlap users
=================  ============================================================================

*Feature transfer* (shared content features) is an option of all of them:
``config.extra["features"]`` (default ``True``) keeps the content projection of the item tower
shared across domains; ``False`` zeroes item content so only ids/relations carry knowledge.
"""

from models.transfer.graph import GraphTransferLearner
from models.transfer.learners import (
    AdversarialLearner,
    CrossDomainLearner,
    EMCDRLearner,
    PTUPCDRLearner,
    SharedLearner,
    TargetOnlyLearner,
)
from models.transfer.lightgcn import LightGCNLearner

#: every cross-domain registry name, baseline first
TRANSFER_LEARNERS = ("cd-target", "cd-shared", "emcdr", "ptupcdr", "cd-adversarial", "lightgcn",
                     "cd-graph")

__all__ = [
    "TRANSFER_LEARNERS",
    "AdversarialLearner",
    "CrossDomainLearner",
    "EMCDRLearner",
    "GraphTransferLearner",
    "LightGCNLearner",
    "PTUPCDRLearner",
    "SharedLearner",
    "TargetOnlyLearner",
]
