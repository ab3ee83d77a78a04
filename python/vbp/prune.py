"""Prune a model by a Plan: fold the pruned neurons' means into the consumer's bias, then narrow every site."""

import torch
from torch import nn

from .errors import VbpError
from .models import model_name
from .ops import fold_bias, slice_mlp
from .plan import Plan
from .sites import find_sites
from .stats import Stats


@torch.no_grad()
def prune(model: nn.Module, plan: Plan, stats: Stats | None = None, compensate: bool = True) -> nn.Module:
    """Prune `model` in place and return it (deep-copy first to keep the original).

    Each site keeps the neurons `plan` lists: every producer keeps rows W1[K, :], b1[K] and the consumer
    columns W2[:, K] (gathered by `ops.slice_mlp`), as real smaller layers of the same kind. With `compensate`,
    each pruned neuron is replaced by its mean hidden value from `stats`, folded into the consumer's bias in
    float64: b2 += W2[:, P] @ mean[P] (a consumer without a bias gains one). The pruned model then computes
    exactly what the original computes with those hidden values held at their means.
    """
    sites = find_sites(model)
    widths = {s.name: s.width for s in sites}
    name = model_name(model)
    if plan.widths != widths or (plan.model and name and plan.model != name):
        raise VbpError(
            f"the plan was made for '{plan.model}' with other MLP sites or widths than this model ('{name}')"
        )
    plan.validate()
    if compensate:
        if stats is None:
            raise VbpError(
                "compensation needs the statistics the plan was selected from; pass stats or compensate=False"
            )
        stats.check_matches(name, widths)
    for site in sites:
        keep = plan.kept(site.name).to(site.device)
        pruned = plan.pruned(site.name).to(site.device)
        (w1, b1), *others = site.producer_weights()
        w2, b2 = site.consumer_weights()
        if compensate and pruned.numel():
            b2 = fold_bias(w2, b2 if b2 is not None else w2.new_zeros(w2.shape[0]), stats.mean(site.name), pruned)
        w1_kept, b1_kept, w2_kept = slice_mlp(w1, b1 if b1 is not None else w1.new_zeros(w1.shape[0]), w2, keep)
        producers = [(w1_kept, b1_kept if b1 is not None else None)]
        producers += [(w[keep], b[keep] if b is not None else None) for w, b in others]  # a gated MLP's up
        site.narrow(producers, (w2_kept, b2))
    return model
