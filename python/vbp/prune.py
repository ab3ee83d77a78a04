"""Prune a model by a Plan: compensate the pruned neurons in the consumer, then narrow every site."""

import dataclasses
import warnings

import torch
from torch import nn

from .compensation import Affine, Compensation, SiteFold
from .errors import VbpError
from .families import find_sites
from .fingerprint import weights_fingerprint
from .model_attributes import PRUNING
from .model_ids import canonical_id
from .models import model_name
from .ops import slice_mlp
from .plan import Plan
from .sites import MlpSite
from .stats import Stats

# how a model was pruned, saved with it: {"criterion": dict, "compensation": dict, "ratio": float}, the
# strategies as their versioned dicts (`Strategy.to_dict`)


@torch.no_grad()
def prune(
    model: nn.Module,
    plan: Plan,
    stats: Stats | None = None,
    compensation: "str | dict | Compensation" = "mean",
    *,
    compensate: bool | None = None,
    ridge: float | None = None,
    other_weights: bool = False,
) -> nn.Module:
    """Prune `model` in place and return it (deep-copy first to keep the original).

    Each site keeps the neurons `plan` lists: every producer keeps rows W1[K, :], b1[K] and the consumer
    columns W2[:, K] (gathered by `ops.slice_mlp`), as real smaller layers of the same kind. `compensation`
    (a config, or its name: "mean" is Mean(); see `vbp.compensation`) says what replaces the pruned hidden
    values: Mean() (VBP: each held at its mean from `stats`, b2 += W2[:, P] @ mean[P]; a consumer without a
    bias gains one), Affine(ridge=...) (each replaced by its least-squares prediction from the kept values;
    needs statistics with covariance) or NoCompensation(). With Mean(), the pruned model computes exactly what
    the original computes with those hidden values held at their means.

    `stats` must have been gathered on this model's weights (their recorded fingerprint, see
    `vbp.fingerprint`, is checked; statistics of another checkpoint or initialisation compensate with the wrong
    means): other_weights=True prunes with them regardless (what `vbp prune --stats-anyway` does).

    Deprecated: compensate=False (use compensation="none") and ridge=r (use compensation=Affine(ridge=r)).
    """
    if not isinstance(plan, Plan):
        raise VbpError(f"prune's plan must be a vbp Plan (from vbp.select), got {type(plan).__name__}")
    if stats is not None and not isinstance(stats, Stats):
        raise VbpError(f"prune's stats must be vbp Stats (from vbp.calibrate) or None, got {type(stats).__name__}")
    strategy = _compensation(compensation, compensate, ridge)
    sites = find_sites(model)
    widths = {s.name: s.width for s in sites}
    name = model_name(model)
    if plan.widths != widths or (plan.model and name and canonical_id(plan.model) != canonical_id(name)):
        raise VbpError(
            f"the plan was made for '{plan.model}' with other MLP sites or widths than this model ('{name}')"
        )
    plan.validate()
    fingerprint = weights_fingerprint(model)  # of the unpruned model: checked against the statistics, and recorded
    if strategy.needs:
        if stats is None:
            raise VbpError(
                f"{strategy.name} compensation needs the statistics the plan was selected from; pass stats, or "
                "compensation='none'"
            )
        stats.check_matches(name, widths)
        if not other_weights and stats.weights and stats.weights != fingerprint:
            raise VbpError(
                "the statistics were gathered on other weights than the model's (another checkpoint or random "
                "initialisation): calibrate this model, or pass other_weights=True to prune with them regardless"
            )
        if "covariance" in strategy.needs:
            stats.check_covariances(widths, needed_for=f"{strategy.name} compensation")
    # before any change: an unregistered compensation has no name to record
    record = current_record({"criterion": plan.criterion, "compensation": strategy.to_dict(), "ratio": plan.ratio})
    record["weights"] = fingerprint  # so that its unpruned reference can be checked
    for site in sites:
        prune_site(site, plan.kept(site.name), plan.pruned(site.name), stats, strategy)
    model.__dict__[PRUNING] = record
    return model


def prune_site(site: MlpSite, keep: torch.Tensor, pruned: torch.Tensor, stats: Stats | None, strategy: Compensation):
    """Narrow one site to the neurons `keep` (int64 [K]), folding the `pruned` ones [P] into its consumer by
    `strategy` with the site's statistics in `stats`."""
    keep, pruned = keep.to(site.device), pruned.to(site.device)
    (w1, b1), *others = site.producer_weights()
    w2, b2 = site.consumer_weights()
    w1_kept, b1_kept, w2_kept = slice_mlp(w1, b1 if b1 is not None else w1.new_zeros(w1.shape[0]), w2, keep)
    w2_kept, b2 = strategy.fold(SiteFold(site.name, w2, b2, w2_kept, keep, pruned, stats))
    producers = [(w1_kept, b1_kept if b1 is not None else None)]
    producers += [(w[keep], b[keep] if b is not None else None) for w, b in others]  # a gated MLP's up
    site.narrow(producers, (w2_kept, b2))


def _compensation(compensation, compensate: bool | None, ridge: float | None) -> Compensation:
    """The compensation config, with the deprecated compensate= and ridge= mapped onto it."""
    if compensate is not None:
        warnings.warn(
            "prune(compensate=...) is deprecated: pass compensation='none' for compensate=False",
            DeprecationWarning,
            stacklevel=4,
        )
        if not compensate:
            compensation = "none"
    strategy = Compensation.resolve(compensation)
    if ridge is None:
        return strategy
    warnings.warn(
        "prune(ridge=...) is deprecated: pass compensation=vbp.Affine(ridge=...)", DeprecationWarning, stacklevel=4
    )
    if not isinstance(strategy, Affine):
        raise VbpError(f"ridge= applies to affine compensation only, not {strategy.name}")
    return dataclasses.replace(strategy, ridge=ridge)


def current_record(record: dict) -> dict:
    """A pruning record in this version's form. Older ones (files, plans) name the criterion and the
    compensation by strings, with affine's ridge beside them."""
    current = {k: v for k, v in record.items() if k != "ridge"}
    for key in ("criterion", "compensation"):
        if isinstance(current.get(key), str):
            current[key] = {"name": current[key], "version": 1}
    if "ridge" in record and isinstance(current.get("compensation"), dict):
        current["compensation"] = {**current["compensation"], "ridge": record["ridge"]}
    return current
