"""Widths to a latency budget: a multiple-choice knapsack over each site's candidate widths, solved exactly by a
dynamic programme over the budget cut into `steps` units.

Value of keeping w neurons of a site: the sum of the criterion's w highest scores there (a prefix of its
ranking, what a global ranking compares too); cost: the table's milliseconds at w. Costs are rounded up to whole
units, so a chosen plan never exceeds the budget; the optimum lost to rounding is at most that of a budget
smaller by one unit per site (the tests compare with brute force).
"""

import numpy as np
import torch

from ..errors import VbpError
from .table import LatencyTable

# the table's key fields a plan records
TABLE_SUMMARY = ("runtime", "batch", "dtype", "device", "device_name", "threads")
STEPS_PER_SITE = 512  # budget units per site: the rounding costs at most 1/512 of the budget per site


def knapsack(values: list[np.ndarray], costs: list[np.ndarray], budget: float, steps: int) -> list[int] | None:
    """Index of one candidate per group (values[g], costs[g]: [C_g]) that maximises the summed value with the
    summed cost at most `budget`, each cost rounded up to a multiple of budget / steps; None when no choice fits."""
    unit = budget / steps
    units = [np.ceil(np.asarray(c, dtype=np.float64) / unit - 1e-9).astype(np.int64) for c in costs]
    best = np.zeros(steps + 1)  # best[b]: the best value of the groups so far with cost <= b units
    choices = []
    for value, cost_units in zip(values, units):
        new = np.full(steps + 1, -np.inf)
        choice = np.full(steps + 1, -1)
        for c, u in enumerate(cost_units.tolist()):
            if u > steps:
                continue
            shifted = best[: steps + 1 - u] + value[c]
            better = shifted > new[u:]
            new[u:][better] = shifted[better]
            choice[u:][better] = c
        best = new
        choices.append(choice)
    if not np.isfinite(best[steps]):
        return None
    picked, b = [], steps
    for g in reversed(range(len(choices))):
        c = int(choices[g][b])
        picked.append(c)
        b -= int(units[g][c])
    return picked[::-1]


def site_options(
    scores: dict[str, torch.Tensor], table: LatencyTable, min_keep: int, round_to: int
) -> dict[str, tuple[list[int], np.ndarray, np.ndarray]]:
    """Per site: (candidate widths, their values [C], their costs in ms [C]). Candidates are the table's measured
    widths on its envelope that keep at least min_keep and are multiples of round_to (the full width always is)."""
    options = {}
    for name, score in scores.items():
        curve = table.curves[table.sites[name]]
        full = curve.widths[-1]
        kept = [(w, ms) for w, ms in curve.candidates() if w == full or (w >= min_keep and w % round_to == 0)]
        prefix = torch.sort(score.double(), descending=True).values.cumsum(0).numpy()
        widths = [w for w, _ in kept]
        options[name] = widths, prefix[np.array(widths) - 1], np.array([ms for _, ms in kept])
    return options


def widths_for_budget(
    scores: dict[str, torch.Tensor],
    table: LatencyTable,
    budget_ms: float,
    min_keep: int = 1,
    round_to: int = 1,
    uniform: bool = False,
) -> dict[str, int]:
    """The kept width of every site that keeps the most score within `budget_ms` predicted end to end; with
    `uniform`, one width u for all sites (min(u, its width) at narrower ones), the best of the candidates' widths.

    A VbpError, giving the best reachable latency and speed-up, when even the narrowest candidates exceed it."""
    options = site_options(scores, table, min_keep, round_to)
    names = list(options)
    if uniform:
        picked, floor_ms = _uniform_widths(scores, table, budget_ms, sorted({w for o in options.values() for w in o[0]}))
    else:
        floor_ms = table.fixed_ms + sum(float(costs.min()) for _, _, costs in options.values())
        room = budget_ms - table.fixed_ms
        choice = None
        if room > 0:
            choice = knapsack([options[n][1] for n in names], [options[n][2] for n in names], room,
                              STEPS_PER_SITE * len(names))
        if choice is None and floor_ms <= budget_ms:  # fits, but only within the rounding of the units
            choice = [int(np.argmin(options[n][2])) for n in names]
        picked = None if choice is None else {n: options[n][0][c] for n, c in zip(names, choice)}
    if picked is None:
        full_ms = table.predict_ms(table.widths)
        raise VbpError(
            f"a predicted latency of {budget_ms:.1f} ms (a {full_ms / budget_ms:.2f}x speed-up) cannot be reached: "
            f"the narrowest widths the table and min_keep={min_keep}, round_to={round_to} allow give "
            f"{floor_ms:.1f} ms, a {full_ms / floor_ms:.2f}x speed-up at best; ask for less"
        )
    return picked


def _uniform_widths(
    scores: dict[str, torch.Tensor], table: LatencyTable, budget_ms: float, sizes: list[int]
) -> tuple[dict[str, int] | None, float]:
    """(the widths min(u, site width) of the size u in `sizes` that keeps the most score within `budget_ms`, or
    None; the least predicted latency of any size)."""
    prefix = {n: torch.sort(s.double(), descending=True).values.cumsum(0) for n, s in scores.items()}
    best, best_value, floor_ms = None, -float("inf"), float("inf")
    for u in sizes:
        widths = {n: min(u, table.widths[n]) for n in scores}
        ms = table.predict_ms(widths)
        floor_ms = min(floor_ms, ms)
        value = sum(float(prefix[n][w - 1]) for n, w in widths.items())
        if ms <= budget_ms and value > best_value:
            best, best_value = widths, value
    return best, floor_ms


def _number(value) -> bool:
    """A finite int or float (not a bool): inf and NaN are no speed-up or budget to select widths for."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def keep_for_target(
    scores: dict[str, torch.Tensor],
    table: LatencyTable,
    target_speedup: float | None = None,
    budget_ms: float | None = None,
    min_keep: int = 1,
    round_to: int = 1,
    uniform: bool = False,
) -> tuple[dict[str, list[int]], dict]:
    """(kept neuron indices per site, the target's record for the Plan) for a predicted speed-up of at least
    `target_speedup` over the full model, or a predicted latency of at most `budget_ms` (give one); `uniform`:
    one width for all sites (see `widths_for_budget`)."""
    if (target_speedup is None) == (budget_ms is None):
        raise VbpError("give one of target_speedup and latency_budget_ms")
    if set(scores) != set(table.sites) or any(table.widths[n] != s.numel() for n, s in scores.items()):
        raise VbpError(
            "the latency table was measured on other MLP sites or widths than the statistics' model; profile this "
            "model (vbp profile) or let vbp prune measure one"
        )
    full_ms = table.predict_ms(table.widths)
    if target_speedup is not None:
        if not _number(target_speedup) or not target_speedup > 1:
            raise VbpError(
                f"the target speed-up must be a finite number above 1 (1.5 is 1.5x faster), got {target_speedup!r}"
            )
        budget_ms = full_ms / target_speedup
    elif not _number(budget_ms) or not budget_ms > 0:
        raise VbpError(f"the latency budget must be a positive, finite number of milliseconds, got {budget_ms!r}")
    widths = widths_for_budget(scores, table, budget_ms, min_keep, round_to, uniform)
    keep = {n: sorted(torch.argsort(scores[n].double(), descending=True, stable=True)[:w].tolist())
            for n, w in widths.items()}
    predicted_ms = table.predict_ms(widths)
    record = {
        "target_speedup": target_speedup,
        "latency_budget_ms": budget_ms,
        "predicted_ms": predicted_ms,
        "predicted_speedup": full_ms / predicted_ms,
        "full_ms": full_ms,
        "table": {k: table.key.get(k) for k in TABLE_SUMMARY},
    }
    return keep, record
