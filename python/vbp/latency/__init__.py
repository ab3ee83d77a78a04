"""Speed as a target: latency tables of a model's MLPs at candidate widths (`profile`, `LatencyTable`) and the
widths that keep the most score within a predicted latency (`keep_for_target`, used by `vbp.select`)."""

from .knapsack import keep_for_target, knapsack, widths_for_budget  # noqa: F401
from .profile import RUNTIMES, measure_speedup, profile, table_for, table_key  # noqa: F401
from .table import LatencyTable, MlpShape, WidthCurve  # noqa: F401
