"""Prune a model by a Plan: compensate the pruned neurons in the consumer, then narrow every site."""

import torch
from torch import nn

from .compensation import SiteFold, get_compensation
from .errors import VbpError
from .models import model_name
from .ops import slice_mlp
from .plan import Plan
from .sites import find_sites
from .stats import Stats

PRUNING_RECORD = "_vbp_pruning"  # how a model was pruned (criterion, compensation, ridge); saved with it


@torch.no_grad()
def prune(
    model: nn.Module,
    plan: Plan,
    stats: Stats | None = None,
    compensate: bool = True,
    compensation: str = "mean",
    ridge: float | None = None,
) -> nn.Module:
    """Prune `model` in place and return it (deep-copy first to keep the original).

    Each site keeps the neurons `plan` lists: every producer keeps rows W1[K, :], b1[K] and the consumer
    columns W2[:, K] (gathered by `ops.slice_mlp`), as real smaller layers of the same kind. `compensation`
    (see `vbp.compensation`) says what replaces the pruned hidden values: "mean" (VBP: each held at its mean
    from `stats`, b2 += W2[:, P] @ mean[P]; a consumer without a bias gains one), "affine" (each replaced by its
    least-squares prediction from the kept values; needs statistics with covariance; `ridge` overrides its
    regularisation) or "none". compensate=False is "none". With "mean", the pruned model computes exactly what
    the original computes with those hidden values held at their means.
    """
    strategy = get_compensation(compensation if compensate else "none")
    sites = find_sites(model)
    widths = {s.name: s.width for s in sites}
    name = model_name(model)
    if plan.widths != widths or (plan.model and name and plan.model != name):
        raise VbpError(
            f"the plan was made for '{plan.model}' with other MLP sites or widths than this model ('{name}')"
        )
    plan.validate()
    if strategy.needs:
        if stats is None:
            raise VbpError(
                f"{strategy.name} compensation needs the statistics the plan was selected from; pass stats, or "
                "compensation='none'"
            )
        stats.check_matches(name, widths)
        if "covariance" in strategy.needs:
            stats.check_covariances(widths, needed_for=f"{strategy.name} compensation")
    for site in sites:
        keep = plan.kept(site.name).to(site.device)
        pruned = plan.pruned(site.name).to(site.device)
        (w1, b1), *others = site.producer_weights()
        w2, b2 = site.consumer_weights()
        w1_kept, b1_kept, w2_kept = slice_mlp(w1, b1 if b1 is not None else w1.new_zeros(w1.shape[0]), w2, keep)
        w2_kept, b2 = strategy.fold(SiteFold(site.name, w2, b2, w2_kept, keep, pruned, stats, ridge))
        producers = [(w1_kept, b1_kept if b1 is not None else None)]
        producers += [(w[keep], b[keep] if b is not None else None) for w, b in others]  # a gated MLP's up
        site.narrow(producers, (w2_kept, b2))
    record = {"criterion": plan.criterion, "compensation": strategy.name, "ratio": plan.ratio}
    if ridge is not None:
        record["ridge"] = ridge
    model.__dict__[PRUNING_RECORD] = record
    return model
