"""Choose which neurons to prune: the lowest-scored go first (VBP scores by activation variance)."""

import numbers
import os
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from .criteria import Criterion, neuron_scores
from .errors import VbpError
from .plan import Plan
from .stats import Stats
from .streams import typical_energy

if TYPE_CHECKING:
    from .latency import LatencyTable

SCOPES = ("global", "layer", "uniform", "residual")
ROUNDING_SLACK = 0.05  # a plan that removes more than 5 points more or less than the ratio asked is warned of


def check_selection_options(widths: dict[str, int], min_keep: int = 1, round_to: int = 1) -> None:
    """Raise VbpError for min_keep / round_to that cannot fit these site widths (cheap: check before calibrating)."""
    for value, what in ((min_keep, "min_keep"), (round_to, "round_to")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise VbpError(f"{what} must be a whole number of neurons, got {value!r} ({type(value).__name__})")
    if min_keep < 1 or min_keep > min(widths.values()):
        raise VbpError(
            f"min_keep must be between 1 and the smallest site width ({min(widths.values())}), got {min_keep}"
        )
    if round_to < 1:
        raise VbpError(f"round_to must be at least 1, got {round_to}")
    if round_to >= min(widths.values()):
        warnings.warn(
            f"round_to={round_to} is at or above the smallest site width ({min(widths.values())}): those sites "
            "cannot be pruned at all",
            stacklevel=3,
        )


def check_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise VbpError(f"ratio must be a number in [0, 1), got {ratio!r} ({type(ratio).__name__})")
    if not 0 <= ratio < 1:
        raise VbpError(f"ratio must be in [0, 1) (the fraction of MLP hidden neurons removed), got {ratio}")
    return float(ratio)


def select(
    stats: Stats,
    ratio: float | None = None,
    scope: str = "global",
    min_keep: int = 1,
    round_to: int = 1,
    criterion: "str | dict | Criterion" = "variance",
    model: nn.Module | None = None,
    seed: int = 0,
    *,
    target_speedup: float | None = None,
    latency_budget_ms: float | None = None,
    latency: "LatencyTable | None" = None,
) -> Plan:
    """A Plan that removes `ratio` of all MLP hidden neurons, those of lowest variance.

    criterion: a config or its name (vbp.Variance() is "variance"; see `vbp.criteria.CRITERIA`):
    "magnitude" (needs `model`) or "random" (uses `seed`) rank by those scores instead, as baselines;
    the plan records it as its versioned dict.

    scope="global" ranks all neurons of all sites together (the paper's choice; prunes unevenly across
    layers); scope="layer" removes `ratio` of each site. Every site keeps at least `min_keep` neurons
    (its highest-variance ones). scope="uniform" gives every site the same kept width (each site its own
    best neurons by `criterion`; sites narrower than that width stay whole), the one that meets `ratio` most
    closely: the layout a single config value (`intermediate_size`) can describe, for `vbp.workflows.export`.
    scope="residual" ranks all neurons together by what removing each costs relative to the residual stream its
    MLP writes into (score / exp E[log ||x||^2], `vbp.streams`): the criterion must score in the consumer's output
    units ("weighted_variance", "redundancy"); raw scores of deep LLMs span orders of magnitude across layers
    (docs/llm.md: the global plan keeps 113 of 1536 neurons in one SmolLM2 layer).
    round_to=N then rounds each kept width to the nearest multiple of N
    (at least N, at most the full width), which moves the total slightly off `ratio`.

    Instead of `ratio`, target_speedup=X (or latency_budget_ms=T) with `latency`, a `vbp.latency.LatencyTable`
    of the model: the widths (measured ones, multiples of round_to, at least min_keep) that keep the most score
    of `criterion` with a predicted speed-up of at least X (latency of at most T ms), chosen by an exact
    knapsack (`vbp.latency.knapsack`; scope="uniform": the best one width for all); the plan has scope
    "latency" (or "uniform") and records target and prediction.
    """
    if not isinstance(stats, Stats):
        hint = f": load the file with vbp.Stats.load({str(stats)!r})" if isinstance(stats, (str, os.PathLike)) else ""
        raise VbpError(f"select takes the vbp.Stats of vbp.calibrate, got {type(stats).__name__}{hint}")
    targeted = target_speedup is not None or latency_budget_ms is not None
    if (ratio is None) != targeted:
        raise VbpError("give select either ratio or a latency target (target_speedup= or latency_budget_ms=)")
    if targeted and latency is None:
        raise VbpError("a latency target needs latency=, the model's LatencyTable (vbp.latency.profile)")
    if targeted and scope == "layer":
        raise VbpError("scope='layer' applies to a ratio; a latency target chooses every site's width itself")
    if not targeted:
        check_ratio(ratio)
    if not stats.sites:
        raise VbpError("the statistics hold no MLP sites; calibrate a model that has some")
    if scope not in SCOPES:
        raise VbpError(f"scope must be one of {SCOPES}, got '{scope}'")
    widths = stats.widths
    check_selection_options(widths, min_keep, round_to)
    criterion = Criterion.resolve(criterion)
    if scope == "residual":
        _check_residual(criterion, stats)
    scores = neuron_scores(criterion, stats, model, seed)
    if scope == "residual":
        scores = {name: v / typical_energy(stats.streams[name]) for name, v in scores.items()}
    if targeted:
        from .latency.knapsack import keep_for_target

        uniform = scope == "uniform"
        keep, target = keep_for_target(scores, latency, target_speedup, latency_budget_ms, min_keep, round_to, uniform)
        pruned_fraction = 1 - sum(map(len, keep.values())) / sum(widths.values())
        return Plan(stats.model, pruned_fraction, scope if uniform else "latency", dict(widths), keep,
                    criterion.to_dict(), target)

    if scope == "layer":
        n_pruned = {name: min(round(ratio * w), w - min_keep) for name, w in widths.items()}
    elif scope == "uniform":
        n_pruned = {}
    else:  # global and residual
        n_pruned = _global_prune_counts(scores, ratio, min_keep)

    keep = {}
    uniform = _uniform_width(widths, ratio, min_keep, round_to) if scope == "uniform" else None
    for name, width in widths.items():
        if uniform is not None:
            kept = min(uniform, width)
        else:
            kept = _rounded_width(width - n_pruned[name], width, round_to, min_keep)
        top = torch.topk(scores[name], kept, sorted=False).indices
        keep[name] = sorted(top.tolist())
    plan = Plan(stats.model, ratio, scope, dict(widths), keep, criterion.to_dict())
    if ratio > 0 and plan.pruned_fraction == 0:
        raise VbpError(
            f"min_keep={min_keep} and round_to={round_to} leave every neuron in place at ratio {ratio} (the smallest "
            f"site has {min(widths.values())}): lower them, or raise the ratio"
        )
    if ratio > 0 and plan.pruned_fraction < 0.5 * ratio:
        warnings.warn(
            f"asked to prune {ratio:.0%} of the MLP neurons, but min_keep={min_keep} and round_to={round_to} let "
            f"only {plan.pruned_fraction:.1%} go; lower them to prune what you asked",
            stacklevel=2,
        )
    elif abs(plan.pruned_fraction - ratio) > ROUNDING_SLACK:
        warnings.warn(
            f"asked to prune {ratio:.1%} of the MLP neurons, but rounding to min_keep={min_keep} and "
            f"round_to={round_to} removes {plan.pruned_fraction:.1%}; lower round_to to come closer to what you asked",
            stacklevel=2,
        )
    return plan


def _check_residual(criterion: Criterion, stats: Stats) -> None:
    if not criterion.output_units:
        raise VbpError(
            f"scope 'residual' compares what removing a neuron costs in its MLP's output, and criterion "
            f"'{criterion.name}' does not score in those units: use weighted_variance or redundancy, or another scope"
        )
    missing = [name for name in stats.sites if name not in stats.streams]
    if missing:
        raise VbpError(
            f"scope 'residual' needs the size of the residual stream site '{missing[0]}' writes into, which these "
            "statistics lack (gathered by an older vbp, or the model has no repeated blocks): calibrate again, or use "
            "scope 'layer' or 'uniform'"
        )


def _global_prune_counts(scores: dict[str, torch.Tensor], ratio: float, min_keep: int) -> dict[str, int]:
    """How many neurons each site loses when the lowest-scored neurons of all sites go first.

    The `min_keep` highest-scored neurons of each site are protected, so no site is emptied and the
    total removed is exactly round(ratio * all neurons) whenever that leaves each site min_keep.
    """
    names = list(scores)
    total = sum(v.numel() for v in scores.values())
    n_prune = round(ratio * total)
    candidates, owners = [], []
    for i, name in enumerate(names):
        v = scores[name]
        order = torch.argsort(v, stable=True)
        candidates.append(v[order[: v.numel() - min_keep]])
        owners.append(torch.full((v.numel() - min_keep,), i))
    candidates, owners = torch.cat(candidates), torch.cat(owners)
    if n_prune > candidates.numel():
        raise VbpError(
            f"ratio {ratio} would leave some site with fewer than min_keep={min_keep} neurons; lower the ratio"
        )
    lowest = torch.argsort(candidates, stable=True)[:n_prune]
    counts = torch.bincount(owners[lowest], minlength=len(names))
    return {name: int(counts[i]) for i, name in enumerate(names)}


def _uniform_width(widths: dict[str, int], ratio: float, min_keep: int, round_to: int) -> int:
    """The one kept width K (a multiple of round_to, at least min_keep) whose total, sum of min(K, width), comes
    closest to keeping 1 - ratio of all neurons (ties: the larger K, pruning less)."""
    sizes = torch.tensor(list(widths.values()))
    target = sizes.sum().item() - round(ratio * sizes.sum().item())
    smallest = -(-min_keep // round_to) * round_to
    candidates = torch.arange(smallest, max(int(sizes.max()), smallest) + 1, round_to)
    candidates = torch.unique(torch.cat([candidates, sizes.max()[None]]))  # the full width is always allowed
    totals = torch.minimum(candidates[:, None], sizes[None, :]).sum(1)
    miss = (totals - target).abs()
    best = (miss == miss.min()).nonzero().flatten()[-1]
    return int(candidates[best])


def _rounded_width(kept: int, width: int, round_to: int, min_keep: int) -> int:
    if round_to == 1:
        return kept
    floor_multiple = -(-min_keep // round_to) * round_to  # smallest multiple of round_to >= min_keep
    nearest = int((kept + round_to / 2) // round_to) * round_to
    return min(width, max(floor_multiple, nearest))
