"""The sweep's figures as PNG files, shaped like the paper's Figs. 4-8 (matplotlib, no display needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..plan import Plan  # noqa: E402
from ..stats import Stats  # noqa: E402
from .sweep import SweepResult  # noqa: E402

# Methods often tie exactly; decreasing marker sizes and distinct styles keep every line visible.
_STYLES = [
    dict(marker="o", markersize=9, linestyle="-"),
    dict(marker="s", markersize=6, linestyle="--"),
    dict(marker="^", markersize=5, linestyle=":"),
    dict(marker="x", markersize=6, linestyle="-."),
]


def _style(i: int) -> dict:
    return _STYLES[i % len(_STYLES)]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def retention_vs_rate(rows: list[dict], base_top1: float, path: Path) -> Path:
    """Fig. 5: top-1 accuracy right after pruning against the pruning rate, one line per method."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        mine = [r for r in rows if r["method"] == method]
        ax.plot([100 * r["rate"] for r in mine], [r["retention_top1"] for r in mine], label=method, **_style(i))
    ax.axhline(base_top1, color="gray", linestyle="--", linewidth=1, label="unpruned")
    ax.set(xlabel="pruning rate (% of MLP neurons)", ylabel="top-1 after pruning (%)", title="Accuracy retention")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def layer_distribution(plans: dict[str, Plan], path: Path) -> Path:
    """Fig. 6: fraction of each MLP's neurons pruned, per method, at one rate."""
    fig, ax = plt.subplots(figsize=(7, 4))
    first = next(iter(plans.values()))
    sites = list(first.widths)
    width = 0.8 / len(plans)
    for i, (method, plan) in enumerate(plans.items()):
        pruned = [100 * (1 - len(plan.keep[s]) / plan.widths[s]) for s in sites]
        ax.bar([j + i * width for j in range(len(sites))], pruned, width=width, label=method)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sites))], [str(j) for j in range(len(sites))])
    ax.set(xlabel="MLP block", ylabel="neurons pruned (%)", title=f"Layer-wise pruning at {100 * first.ratio:.0f}%")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def learning_curves(histories: dict[str, list[dict]], base_top1: float, rate: float, path: Path) -> Path:
    """Fig. 4: validation top-1 during fine-tuning, per method, starting from accuracy right after pruning."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (method, (start, history)) in enumerate(histories.items()):
        ax.plot([0] + [h["epoch"] for h in history], [start] + [h["top1"] for h in history], label=method, **_style(i))
    ax.axhline(base_top1, color="gray", linestyle="--", linewidth=1, label="unpruned")
    ax.set(xlabel="fine-tuning epoch", ylabel="top-1 (%)", title=f"Fine-tuning after pruning {100 * rate:.0f}%")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def activation_histograms(stats: Stats, plan: Plan, sites: list[str], pruned: bool, path: Path) -> Path:
    """Figs. 7-8: sampled values of one neuron per chosen site before and after the non-linearity.

    pruned=True shows the lowest-variance pruned neuron of each site, False the highest-variance kept one;
    every site must have such a neuron.
    """
    fig, axes = plt.subplots(1, len(sites), figsize=(4 * len(sites), 3.2), squeeze=False)
    for ax, site in zip(axes[0], sites):
        var = stats.variance(site).cpu()
        candidates = plan.pruned(site) if pruned else plan.kept(site)
        pick = candidates[var[candidates].argmin()] if pruned else candidates[var[candidates].argmax()]
        sample = stats.samples[site]
        pre, post = sample["pre"][:, pick], sample["post"][:, pick]
        low, high = float(torch.minimum(pre.min(), post.min())), float(torch.maximum(pre.max(), post.max()))
        bins = torch.linspace(low, high if high > low else low + 1, 60).tolist()
        ax.hist(pre.tolist(), bins=bins, alpha=0.5, label="before activation")
        ax.hist(post.tolist(), bins=bins, alpha=0.5, label="after activation")
        ax.set_title(f"{site} - neuron {int(pick)} ({'pruned' if pruned else 'retained'})")
        ax.set_xlabel(f"value (var after: {float(var[pick]):.2g})")
    axes[0][0].legend()
    return _save(fig, path)


def sweep_figures(result: SweepResult, stats: Stats, figure_rate: float, histogram_method: str, output: Path) -> None:
    """Figs. 4-8 of a sweep into `output`: curves and layer shares at `figure_rate`, and activation histograms
    of the first, middle and last site that has a pruned (kept) neuron under `histogram_method`'s plan."""
    retention_vs_rate(result.rows, result.base_top1, output / "fig5_retention.png")
    layer_distribution({m: p for (m, r), p in result.plans.items() if r == figure_rate}, output / "fig6_layers.png")
    if result.histories:
        starts = {r["method"]: r["retention_top1"] for r in result.rows if r["rate"] == figure_rate}
        curves = {m: (starts[m], h) for (m, r), h in result.histories.items() if r == figure_rate}
        learning_curves(curves, result.base_top1, figure_rate, output / "fig4_learning_curves.png")
    plan = result.plans[(histogram_method, figure_rate)]
    for pruned, name in ((True, "fig7_pruned_activations.png"), (False, "fig8_retained_activations.png")):
        sites = [s for s in stats.sites if (plan.pruned(s) if pruned else plan.kept(s)).numel()]
        if sites:
            chosen = list(dict.fromkeys([sites[0], sites[len(sites) // 2], sites[-1]]))
            activation_histograms(stats, plan, chosen, pruned, output / name)
