"""The rate sweep: calibrate once, then for each pruning method and rate prune, evaluate, optionally fine-tune.

A method is a criterion and a compensation, written "criterion+compensation": "variance+mean" (VBP),
"variance+affine", "redundancy+affine", "magnitude" (no compensation), ... ("+comp" is "+mean"). The table is
shaped like the paper's Table 10.
"""

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from ..count import count
from ..errors import VbpError
from ..files import write_csv_atomic, write_text_atomic
from ..method import Method
from ..plan import Plan
from ..prune import prune
from ..select import check_ratio, select
from ..stats import Stats
from .data import loader
from .evaluate import accuracy, retention
from .finetune import FinetuneConfig, finetune
from .report import change

DEFAULT_METHODS = ("variance+mean", "variance+affine", "redundancy+affine", "variance", "magnitude", "random")


def check_rates(rates: list[float]) -> list[float]:
    if not rates:
        raise VbpError("give at least one rate")
    return [check_ratio(r) for r in rates]


def parse_rates(text: str) -> list[float]:
    """ "0.1,0.3,0.5" -> [0.1, 0.3, 0.5], each checked to lie in [0, 1)."""
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError as exc:
        raise VbpError(f"rates must be comma-separated numbers in [0, 1), got '{text}'") from exc
    return check_rates(rates)


@dataclass
class SweepResult:
    """rows: one dict per (method, rate), Table 10's columns; plans and fine-tuning histories by (method, rate);
    the unpruned model's top-1, GMACs and M params."""

    rows: list[dict]
    plans: dict[tuple[str, float], Plan]
    histories: dict[tuple[str, float], list[dict]]
    base_top1: float
    base_gmacs: float
    base_mparams: float


def sweep(
    model: nn.Module,
    stats: Stats,
    rates: list[float],
    methods: list[Method],
    val: Dataset,
    train: Dataset | None = None,
    finetune_config: FinetuneConfig | None = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
    scope: str = "global",
    min_keep: int = 1,
    round_to: int = 1,
) -> SweepResult:
    """Prune `model` (left unchanged) by every method at every rate; evaluate top-1 on `val` right after
    pruning and, with `finetune_config` and `train`, after fine-tuning (distilling from `model`).
    scope / min_keep / round_to: as `select` takes them, for every plan."""
    check_rates(rates)
    val_loader = loader(val, batch_size)
    base_top1 = accuracy(model, val_loader, progress=False)["top1"]
    base_macs, base_params = count(model)
    rows, plans, histories = [], {}, {}
    for method in methods:
        for rate in rates:
            plan = select(
                stats,
                rate,
                scope=scope,
                min_keep=min_keep,
                round_to=round_to,
                criterion=method.criterion,
                model=model,
                seed=seed,
            )
            pruned = prune(copy.deepcopy(model), plan, stats, compensation=method.compensation)
            macs, params = count(pruned)
            top1 = accuracy(pruned, val_loader, progress=False)["top1"]
            row = {
                "method": str(method),
                "rate": rate,
                "gmacs": macs / 1e9,
                "gmacs_change": change(macs, base_macs),
                "mparams": params / 1e6,
                "mparams_change": change(params, base_params),
                "retention_top1": top1,
                "retention_pct": retention(top1, base_top1),
            }
            if finetune_config is not None and train is not None:
                history = finetune(pruned, train, val, finetune_config, teacher=model, progress=progress)
                histories[(str(method), rate)] = history
                row.update(final_top1=history[-1]["top1"], final_pct=retention(history[-1]["top1"], base_top1))
            rows.append(row)
            plans[(str(method), rate)] = plan
    return SweepResult(rows, plans, histories, base_top1, base_macs / 1e9, base_params / 1e6)


def table_markdown(result: SweepResult, model: str) -> str:
    """One Table-10-shaped table per method: rate, MACs, params, retention and final accuracy.

    MACs are in G as in the paper, or in M for models under 0.1 GMACs.
    """
    finetuned = "final_top1" in result.rows[0]
    unit, scale = ("G", 1) if result.base_gmacs >= 0.1 else ("M", 1e3)
    out = []
    for method in dict.fromkeys(r["method"] for r in result.rows):
        out.append(f"### {model}, {method}\n")
        head = f"| rate | MACs ({unit}) | params (M) | retention top-1 (%) |" + (
            " final top-1 (%) |" if finetuned else ""
        )
        out.append(head)
        out.append("|" + " --- |" * (head.count("|") - 1))
        out.append(
            f"| base | {result.base_gmacs * scale:.3f} | {result.base_mparams:.4f} | {result.base_top1:.2f} |"
            + (" - |" if finetuned else "")
        )
        for r in (r for r in result.rows if r["method"] == method):
            line = (
                f"| {100 * r['rate']:.0f}% | {r['gmacs'] * scale:.3f} ({r['gmacs_change']}) | {r['mparams']:.4f} "
                f"({r['mparams_change']}) | {r['retention_top1']:.2f} ({_pct(r['retention_pct'])}) |"
            )
            if finetuned:
                line += f" {r['final_top1']:.2f} ({_pct(r['final_pct'])}) |"
            out.append(line)
        out.append("")
    return "\n".join(out)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def write_tables(result: SweepResult, model: str, output: Path) -> None:
    """output/table.csv, table.md and sweep.json (rows plus the unpruned model's figures)."""
    write_csv_atomic(output / "table.csv", result.rows)
    write_text_atomic(output / "table.md", table_markdown(result, model))
    doc = {
        "model": model,
        "base_top1": result.base_top1,
        "base_gmacs": result.base_gmacs,
        "base_mparams": result.base_mparams,
        "rows": result.rows,
    }
    write_text_atomic(output / "sweep.json", json.dumps(doc, indent=1) + "\n")
