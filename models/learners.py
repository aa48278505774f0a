"""Import every built-in learner module so that each registers itself in ``REGISTRY``."""

from models import fomaml, maml, matching, proto, sequence  # noqa: F401

__all__ = ["fomaml", "maml", "matching", "proto", "sequence"]
