"""Knowledge-retention methods, independent of environments and learners (see ``methods``)."""

from retainrl.retention.dists import kl, reduce_samples
from retainrl.retention.fisher import fisher_diagonal
from retainrl.retention.methods import REGISTRY, RetentionContext, RetentionMethod, build_retention, check_method
from retainrl.retention.policy import RetainablePolicy
from retainrl.retention.replay import ProtectedReplay

__all__ = [
    "REGISTRY",
    "ProtectedReplay",
    "RetainablePolicy",
    "RetentionContext",
    "RetentionMethod",
    "build_retention",
    "check_method",
    "fisher_diagonal",
    "kl",
    "reduce_samples",
]
