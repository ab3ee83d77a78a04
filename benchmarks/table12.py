"""Paper Table 12, end to end: full vs pruned vs pruned + `vbp.compact`, with the FLOP-ideal speed-up beside.

    .venv/bin/python benchmarks/table12.py [--out DIR] [--batch N] [--rounds R]

Models and rates as the paper: DeiT-B 55%, DeiT-S 50%, Swin-B 55%, ConvNeXt-B 55%. CUDA: bf16, batch 256,
eager and torch.compile, each timed by triton.testing.do_bench (median). CPU: fp32, a small batch, the models
timed in turn (`vbp.timing.latencies`), beside the paper's Xeon E5 column. Weights are random (none can be
downloaded here), so a global plan's widths are those of random weights; the per-layer plan's widths do not
depend on the weights at all, so both are run and the widths are reported.
"""

import argparse
import copy
import json
import time
from pathlib import Path

import timm
import torch

import vbp
from vbp.timing import latencies

# (timm name, rate, paper speed-up on H200, on Xeon E5)
MODELS = [
    ("deit_base_patch16_224", 0.55, 1.44, 1.50),
    ("deit_small_patch16_224", 0.50, 1.34, 1.43),
    ("swin_base_patch4_window7_224", 0.55, 1.30, 1.31),
    ("convnext_base", 0.55, 1.49, 1.71),
]


def _median_ms(models: dict, images: torch.Tensor, rounds: int) -> dict[str, float]:
    if images.is_cuda:
        from triton.testing import do_bench

        def timed(m):
            def run():
                with torch.inference_mode():
                    m(images)

            return run

        return {name: do_bench(timed(m), warmup=50, rep=300, return_mode="median") for name, m in models.items()}
    return {name: 1e3 * t for name, t in latencies(models, images, rounds=rounds).items()}


def run(device: str, batch: int, rounds: int, compile_models: bool) -> list[dict]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = []
    for name, rate, paper_gpu, paper_cpu in MODELS:
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        size = tuple(model.pretrained_cfg["input_size"])
        calib = [torch.randn(8, *size, generator=torch.Generator().manual_seed(1))]
        stats = vbp.calibrate(model, calib, progress=False, backend="torch")
        macs_full = vbp.count(model)[0]
        for scope in ("global", "layer"):
            plan = vbp.select(stats, rate, scope=scope)
            pruned = vbp.prune(copy.deepcopy(model), plan, stats)
            macs = vbp.count(pruned)[0]
            variants = {
                "full": model,
                "pruned": pruned,
                "pruned+compact": vbp.compact(copy.deepcopy(pruned)),
            }
            variants = {k: copy.deepcopy(m).to(device, dtype) for k, m in variants.items()}
            if compile_models:
                variants.update({f"{k} compiled": torch.compile(m) for k, m in list(variants.items())})
            images = torch.randn(batch, *size, device=device, dtype=dtype)
            started = time.perf_counter()
            ms = _median_ms(variants, images, rounds)
            rows.append(
                {
                    "model": name,
                    "rate": rate,
                    "scope": scope,
                    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "dtype": str(dtype),
                    "batch": batch,
                    "widths": list(plan.kept_widths.values()),
                    "flop_ideal": macs_full / macs,
                    "ms": ms,
                    "speedup": {k: ms[k.replace("pruned", "full", 1).replace("+compact", "")] / v
                                for k, v in ms.items() if k.startswith("pruned")},
                    "paper_speedup": paper_gpu if device == "cuda" else paper_cpu,
                    "seconds": time.perf_counter() - started,
                }
            )
            print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    ups = ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup"].items())
    return (f"{r['model']} {r['rate']:.0%} {r['scope']}: full {r['ms']['full']:.2f} ms; {ups}; FLOP ideal "
            f"{r['flop_ideal']:.2f}x (paper {r['paper_speedup']:.2f}x)")


def markdown(rows: list[dict]) -> str:
    lines = ["| model | rate | plan | full (ms) | pruned | pruned + compact | FLOP ideal | paper |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        up = r["speedup"]
        lines.append(
            f"| {r['model']} | {r['rate']:.0%} | {r['scope']} | {r['ms']['full']:.2f} | {up['pruned']:.2f}x | "
            f"{up['pruned+compact']:.2f}x | {r['flop_ideal']:.2f}x | {r['paper_speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for table12.json and table12.md")
    cuda = torch.cuda.is_available()
    parser.add_argument("--batch", type=int, default=256 if cuda else 4)
    parser.add_argument("--rounds", type=int, default=5, help="CPU: rounds of timing in turn")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    args = parser.parse_args()
    rows = run("cuda" if cuda else "cpu", args.batch, args.rounds, compile_models=cuda and not args.no_compile)
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table12.json").write_text(json.dumps(rows, indent=1))
        (args.out / "table12.md").write_text(table)


if __name__ == "__main__":
    main()
