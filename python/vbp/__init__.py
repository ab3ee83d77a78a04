"""vbp: Variance-Based Pruning of trained networks (arXiv 2507.12988).

model + data --calibrate--> Stats --select--> Plan --prune--> pruned model --save_pruned--> file
"""

from importlib import metadata as _metadata

from .calibrate import calibrate
from .checkpoint import load_pruned, save_pruned
from .compact import CompactMlp, compact
from .compensation import COMPENSATIONS, Affine, Compensation, Mean, NoCompensation
from .count import count
from .criteria import CRITERIA, Criterion, Magnitude, Random, Redundancy, Variance, WeightedVariance
from .errors import VbpError
from .families import find_sites
from .families.spec import SiteSpec
from .models import create_model
from .plan import Plan
from .prune import prune
from .select import select
from .sequential import prune_sequential
from .sites import MlpSite
from .stats import Moments, Stats
from .workflows.digits import digits_split

try:
    __version__ = _metadata.version("vbp")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Affine",
    "COMPENSATIONS",
    "CRITERIA",
    "CompactMlp",
    "Compensation",
    "Criterion",
    "Magnitude",
    "Mean",
    "MlpSite",
    "Moments",
    "NoCompensation",
    "Plan",
    "Random",
    "Redundancy",
    "SiteSpec",
    "Stats",
    "Variance",
    "VbpError",
    "WeightedVariance",
    "calibrate",
    "compact",
    "count",
    "create_model",
    "digits_split",
    "find_sites",
    "load_pruned",
    "prune",
    "prune_sequential",
    "save_pruned",
    "select",
]


def __getattr__(name: str):
    """vbp.finetune and vbp.FinetuneConfig (`vbp.workflows.finetune`), imported when first used."""
    if name in ("finetune", "FinetuneConfig"):
        from .workflows import finetune as module

        return getattr(module, name)
    raise AttributeError(f"module 'vbp' has no attribute {name!r}")
