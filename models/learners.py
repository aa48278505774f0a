"""Import every built-in learner module so that each registers itself in ``REGISTRY``."""

# transfer: the cross-domain learners (cd-*, emcdr, ptupcdr, lightgcn)
from models import fomaml, hybrid, maml, matching, proto, sequence, transfer  # noqa: F401

__all__ = ["fomaml", "hybrid", "maml", "matching", "proto", "sequence", "transfer"]
