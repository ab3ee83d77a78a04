"""The main job on the embedded default: prune the digits ViT by VBP and show what it costs and gains."""

import copy
import time
from pathlib import Path

import torch

from ..calibrate import calibrate
from ..checkpoint import load_pruned, save_pruned
from ..compact import compact
from ..errors import VbpError
from ..families.embedded import MODEL_NAME
from ..models import create_model
from ..ops import has_extension
from ..prune import prune
from ..select import select
from ..timing import latencies
from .data import loader
from .digits import digits_split
from .evaluate import accuracy, latency_images, retention
from .report import change, summarize

# Large enough that the tiny model's per-call overheads do not hide the MLP's share of the work.
LATENCY_BATCH = 4096


def run_demo(ratio: float = 0.5, output: Path = Path("out/demo"), device: str = "cpu") -> dict:
    """Calibrate on the digits training split, prune `ratio` of the MLP neurons, compare, save, reload.

    Prints a report and returns its numbers.
    """
    start = time.perf_counter()
    model = create_model(MODEL_NAME, pretrained=True).to(device)
    train, test = loader(digits_split("train"), 256), loader(digits_split("test"), 256)

    stats = calibrate(model, train, progress=False)
    plan = select(stats, ratio)
    pruned = prune(copy.deepcopy(model), plan, stats)

    acc_full = accuracy(model, test, progress=False)["top1"]
    acc_pruned = accuracy(pruned, test, progress=False)["top1"]
    summary = summarize(model, pruned, MODEL_NAME, ratio)
    images = latency_images(test, LATENCY_BATCH, device)
    compacted = compact(copy.deepcopy(pruned))
    times = latencies({"full": model, "pruned": pruned, "compact": compacted}, images)
    t_full, t_pruned, t_compact = times["full"], times["pruned"], times["compact"]
    with torch.inference_mode():
        pruned_out = pruned(images)
        compact_diff = (compacted(images) - pruned_out).abs().max().item()

    path = output / "model.safetensors"
    save_pruned(pruned, path)
    plan.save(output / "plan.json")
    reloaded = load_pruned(path, device)
    with torch.inference_mode():
        max_diff = (reloaded(images) - pruned_out).abs().max().item()
    if max_diff != 0:
        raise VbpError(f"the reloaded model differs from the pruned one (max abs difference {max_diff})")

    widths = summary["widths"]
    print(
        f"VBP demo: {MODEL_NAME} on scikit-learn digits ({len(train.dataset)} train / {len(test.dataset)} test images)"
    )
    print(
        f"pruned {100 * plan.pruned_fraction:.1f}% of MLP neurons, global ranking by variance; kept widths per block:"
    )
    print("  " + " ".join(str(w) for w in widths.values()) + f"  (of {next(iter(plan.widths.values()))})")
    print(f"{'':22}{'full':>12}{'pruned':>12}{'change':>10}")
    print(f"{'top-1 accuracy (%)':22}{acc_full:12.2f}{acc_pruned:12.2f}   retention {retention(acc_pruned, acc_full):.2f}%")
    for label, full, after in (
        ("MACs (M)", summary["macs_full_g"] * 1e3, summary["macs_g"] * 1e3),
        ("params (K)", summary["params_full_m"] * 1e3, summary["params_m"] * 1e3),
    ):
        print(f"{label:22}{full:12.2f}{after:12.2f}{change(after, full):>10}")
    print(
        f"{f'latency, batch {LATENCY_BATCH} (ms)':22}{t_full * 1e3:12.3f}{t_pruned * 1e3:12.3f}"
        f"   speed-up {t_full / t_pruned:.2f}x (median of runs in turn, {torch.get_num_threads()} CPU threads)"
    )
    mlp_kernel = "compact_mlp: oneDNN or eager, measured" if has_extension() else "PyTorch fallback: vbp._C not built"
    print(
        f"{'  with vbp.compact':22}{'':12}{t_compact * 1e3:12.3f}   speed-up {t_full / t_compact:.2f}x "
        f"({mlp_kernel}; max abs diff to pruned {compact_diff:.1e})"
    )
    print(f"saved to {path}; reloaded outputs identical to the pruned model's (max abs diff {max_diff})")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return {
        "acc_full": acc_full,
        "acc_pruned": acc_pruned,
        "latency_full_s": t_full,
        "latency_pruned_s": t_pruned,
        "latency_compact_s": t_compact,
        "compact_max_abs_diff": compact_diff,
        **summary,
    }
