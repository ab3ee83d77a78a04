"""Prune a model by a Plan: fold the pruned neurons' means into fc2's bias, then slice fc1 and fc2."""

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

    Each site keeps the neurons `plan` lists: fc1 becomes W1[K, :], b1[K] and fc2 becomes W2[:, K] (gathered
    by `ops.slice_mlp`), real smaller layers of the same kind. With `compensate`, each pruned neuron is replaced by its mean
    activation from `stats`, folded into fc2's bias in float64: b2 += W2[:, P] @ mean[P]. The pruned
    model then computes exactly what the original computes with those activations held at their means.
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
        keep = plan.kept(site.name).to(site.fc1.weight.device)
        pruned = plan.pruned(site.name).to(site.fc1.weight.device)
        w1, b1 = site.fc1.weight, site.fc1.bias
        w2, b2 = site.fc2.weight, site.fc2.bias
        if compensate and pruned.numel():
            # flatten(1): a 1x1 conv's weight is [out, in, 1, 1]
            b2 = b2 if b2 is not None else w2.new_zeros(w2.shape[0])
            b2 = fold_bias(w2.flatten(1), b2, stats.mean(site.name), pruned)
        w1_kept, b1_kept, w2_kept = slice_mlp(
            w1.flatten(1), b1 if b1 is not None else w1.new_zeros(w1.shape[0]), w2.flatten(1), keep
        )
        site.set_width(keep.numel(), fc2_bias=b2 is not None)
        site.fc1.weight.copy_(w1_kept.view_as(site.fc1.weight))
        if b1 is not None:
            site.fc1.bias.copy_(b1_kept)
        site.fc2.weight.copy_(w2_kept.view_as(site.fc2.weight))
        if b2 is not None:
            site.fc2.bias.copy_(b2)
    return model
