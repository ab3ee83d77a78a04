"""The summary of a pruning run: MACs and parameters before and after, and the kept width of every site."""

import json
import os

from torch import nn

from ..count import count
from ..families import site_widths
from ..files import write_text_atomic


def summarize(full: nn.Module, pruned: nn.Module, model: str, ratio: float) -> dict:
    """model, ratio (asked), ratio_removed (the fraction of MLP hidden neurons actually removed), macs_full_g,
    macs_g, params_full_m, params_m, widths (kept width per site)."""
    macs_full, params_full = count(full)
    macs, params = count(pruned)
    widths, full_widths = site_widths(pruned), site_widths(full)
    return {
        "model": model,
        "ratio": ratio,
        "ratio_removed": 1 - sum(widths.values()) / sum(full_widths.values()),
        "macs_full_g": macs_full / 1e9,
        "macs_g": macs / 1e9,
        "params_full_m": params_full / 1e6,
        "params_m": params / 1e6,
        "widths": widths,
    }


def change(after: float, before: float) -> str:
    """'-31.74%'-style relative change, as the paper's tables print it."""
    return f"{100 * (after - before) / before:+.2f}%"


def _before_after(before: float, after: float, unit: str, small: str) -> str:
    """'4.61 -> 3.12 GMACs'; counts under 0.1 of `unit` (the embedded digits ViT's 0.0009 GMACs) in the unit a
    thousand times smaller, `small`, so that they do not print as 0.00."""
    scale, unit = (1, unit) if before >= 0.1 else (1e3, small)
    return f"{before * scale:.2f} -> {after * scale:.2f} {unit} ({change(after, before)})"


def format_summary(s: dict) -> str:
    """One line: the fraction of MLP neurons removed (and the ratio asked, when rounding moved it), MACs and
    parameters before and after; the latency lines when the summary has them."""
    removed, asked = s["ratio_removed"], s["ratio"]
    ratio = f"{removed:.1%} of the MLP neurons removed" + (f" (asked {asked:.1%})" if f"{removed:.1%}" != f"{asked:.1%}" else "")
    text = (
        f"{s['model']}, {ratio}: {_before_after(s['macs_full_g'], s['macs_g'], 'GMACs', 'MMACs')}, "
        f"{_before_after(s['params_full_m'], s['params_m'], 'M params', 'K params')}"
    )
    return text + format_latency(s["latency"], s["widths"]) if "latency" in s else text


def format_latency(t: dict, widths: dict[str, int]) -> str:
    """The speed-up line of a summary's "latency" part (see commands/prune.py), and the kept widths."""
    parts = [f"target {t['target_speedup']:.2f}x"] if t.get("target_speedup") else []
    parts += [f"predicted {t['predicted_speedup']:.2f}x"] if "predicted_speedup" in t else []
    if "measured_speedup" in t:
        parts.append(f"measured {t['measured_speedup']:.2f}x ({t['reference_latency_ms']:.1f} -> {t['latency_ms']:.1f} ms)")
    parts.append(f"MACs alone {t['mac_speedup']:.2f}x")
    return (
        f"\nend-to-end speed-up ({t['runtime']}, batch {t['batch']}): {', '.join(parts)}"
        f"\nkept widths: {' '.join(str(w) for w in widths.values())}"
    )


def write_summary(path: str | os.PathLike, summary: dict) -> None:
    write_text_atomic(path, json.dumps(summary, indent=2) + "\n")
