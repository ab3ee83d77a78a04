"""vbp: Variance-Based Pruning of trained networks (arXiv 2507.12988).

model + data --calibrate--> Stats --select--> Plan --prune--> pruned model --save_pruned--> file
"""

from importlib import metadata as _metadata

from .calibrate import calibrate
from .checkpoint import load_pruned, save_pruned
from .compact import CompactMlp, compact
from .digits import digits_split  # also registers the timm model 'vbp_digits_vit'
from .count import count
from .errors import VbpError
from .models import create_model
from .plan import Plan
from .prune import prune
from .select import select
from .families.spec import SiteSpec
from .sites import MlpSite, find_sites
from .stats import Moments, Stats

try:
    __version__ = _metadata.version("vbp")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CompactMlp",
    "MlpSite",
    "Moments",
    "Plan",
    "SiteSpec",
    "Stats",
    "VbpError",
    "calibrate",
    "compact",
    "count",
    "create_model",
    "digits_split",
    "find_sites",
    "load_pruned",
    "prune",
    "save_pruned",
    "select",
]
