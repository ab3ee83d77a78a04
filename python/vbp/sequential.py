"""Sequential pruning: the sites are pruned one at a time, in the order the model runs them, each with
statistics gathered on the model whose earlier sites are already pruned and compensated, so that every
compensation sees the inputs it will get (one-shot `prune` gathers them all on the unpruned model)."""

import dataclasses

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibrate import calibrate
from .compensation import Compensation
from .criteria import Criterion, neuron_scores
from .errors import VbpError
from .families import find_sites
from .fingerprint import weights_fingerprint
from .model_attributes import PRUNING
from .model_ids import canonical_id
from .models import model_name
from .plan import Plan
from .prune import current_record, prune_site


@torch.no_grad()
def prune_sequential(
    model: nn.Module,
    plan: Plan,
    data,
    compensation: "str | dict | Compensation" = "mean",
    *,
    seed: int = 0,
    progress: bool = True,
    **calibrate_options,
) -> tuple[nn.Module, Plan]:
    """Prune `model` in place site by site; returns (the model, the plan it followed).

    plan: from `vbp.select` on the unpruned model's statistics; it fixes how many neurons each site keeps.
    data: re-iterable batches, as `vbp.calibrate` takes them; run once per site (calibrate_options go to it).
    At each site the statistics are gathered again on the model as pruned so far; the site keeps its planned
    number of best neurons by the plan's criterion on them (`seed` for a random one), and `compensation`
    folds the others into its consumer with them. The pruned model records `sequential: true`.
    """
    if not isinstance(plan, Plan):
        raise VbpError(f"prune_sequential's plan must be a vbp Plan (from vbp.select), got {type(plan).__name__}")
    strategy, criterion = Compensation.resolve(compensation), Criterion.resolve(plan.criterion)
    sites = find_sites(model)
    name = model_name(model)
    if plan.widths != {s.name: s.width for s in sites} or (plan.model and name and canonical_id(plan.model) != canonical_id(name)):
        raise VbpError(f"the plan was made for '{plan.model}' with other MLP sites or widths than this model ('{name}')")
    plan.validate()
    needs = strategy.needs | criterion.needs
    record = current_record({"criterion": plan.criterion, "compensation": strategy.to_dict(), "ratio": plan.ratio})
    record.update(weights=weights_fingerprint(model), sequential=True)
    keep = {}
    for site in tqdm(sites, desc="sequential", unit="site", disable=not progress):
        # a criterion that reads covariances reads every site's; a compensation only this site's
        covariance = True if "covariance" in criterion.needs else [site.name] if "covariance" in needs else False
        stats = calibrate(model, data, progress=False, covariance=covariance, **calibrate_options)
        scores = neuron_scores(criterion, stats, model, seed)[site.name]
        kept = torch.topk(scores, len(plan.keep[site.name]), sorted=False).indices.sort().values
        pruned = torch.ones(site.width, dtype=torch.bool)
        pruned[kept] = False
        prune_site(site, kept, pruned.nonzero().flatten(), stats, strategy)
        keep[site.name] = kept.tolist()
    model.__dict__[PRUNING] = record
    return model, dataclasses.replace(plan, keep=keep)
