"""Second-order MAML: the FOMAML model, trained through the inner loop.

Serving is identical to :class:`~models.fomaml.FOMAMLLearner` (closed-form inner steps, no
autograd). Only training differs: :func:`models.training.meta_train` keeps the graph of the
closed-form inner gradient, so the outer gradient includes the Hessian-vector terms. Slower to
train, offline option.
"""

from __future__ import annotations

from models.base import register
from models.fomaml import FOMAMLLearner


@register
class MAMLLearner(FOMAMLLearner):
    """Same architecture and serve path as ``fomaml``; second-order meta-training by default."""

    name = "maml"
    first_order_default = False
