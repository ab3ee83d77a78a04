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


def format_summary(s: dict) -> str:
    text = (
        f"{s['model']} at ratio {s['ratio']:.4g}: "
        f"{s['macs_full_g']:.2f} -> {s['macs_g']:.2f} GMACs ({change(s['macs_g'], s['macs_full_g'])}), "
        f"{s['params_full_m']:.2f} -> {s['params_m']:.2f} M params ({change(s['params_m'], s['params_full_m'])})"
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
