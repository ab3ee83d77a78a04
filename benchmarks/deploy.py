"""Deployment evidence (issue 18): onnxruntime next to PyTorch eager, and what the loadable uniform layout costs.

    .venv/bin/python benchmarks/deploy.py [--out DIR] [--threads 2] [--rounds 7] [--quick]

1. DeiT-S 50% (random weights: none can be downloaded here; calibrated on random images, so the global plan's
   widths are those of random weights): full vs pruned (global) vs pruned (--scope uniform), each as PyTorch eager
   and as onnxruntime (CPU, `--threads` intra-op threads, torch on as many), all six timed in turn
   (`vbp.timing.interleaved_medians`) at batch 1 and 16, with the MAC ideal (`vbp.count`) beside.
2. all-MiniLM-L6-v2 (real weights): --scope uniform vs global at 30/50/70%, cosine / nearest-neighbour agreement of
   the sentence embeddings with the unpruned model's (`vbp.workflows.text.embedding_agreement`), and the same
   runtimes at 50% on a batch of 32 x 64 tokens.
Writes deploy.json and deploy.md into --out (default benchmarks/results/deploy).
"""

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

import vbp
from vbp.timing import interleaved_medians
from vbp.workflows import minilm
from vbp.workflows.export import export_onnx
from vbp.workflows.text import embedding_agreement, sentence_embeddings, text_loader


def session(path: str, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def time_variants(models: dict, feeds: dict, folder: str, rounds: int, threads: int, example) -> dict:
    """{variant: {"eager_ms", "ort_ms", "max_rel_error"}}: every model as eager and as onnxruntime, timed in turn."""
    calls, errors = {}, {}
    for name, model in models.items():
        path = os.path.join(folder, f"{name}.onnx")
        result = export_onnx(model, path, example)
        errors[name] = result["max_rel_error"]
        ort = session(path, threads)
        names = result["inputs"]

        def eager(model=model):
            with torch.inference_mode():
                return model(**feeds["torch"]) if isinstance(feeds["torch"], dict) else model(feeds["torch"])

        calls[f"{name}/eager"] = eager
        calls[f"{name}/ort"] = partial(ort.run, None, {n: feeds["numpy"][n] for n in names})
    medians = interleaved_medians(calls, rounds)
    return {name: {"eager_ms": 1e3 * medians[f"{name}/eager"], "ort_ms": 1e3 * medians[f"{name}/ort"],
                   "max_rel_error": errors[name]} for name in models}


def prune_both(model, stats, ratio: float, **select) -> dict:
    out = {"full": model}
    for scope in ("global", "uniform"):
        plan = vbp.select(stats, ratio, scope=scope, **select)
        out[scope] = vbp.prune(copy.deepcopy(model), plan, stats).eval()
    return out


def deit(args, folder: str) -> dict:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224").eval()
    images = [torch.randn(8, 3, 224, 224) for _ in range(1 if args.quick else 4)]
    stats = vbp.calibrate(model, images, progress=False)
    models = prune_both(model, stats, 0.5)
    macs = {name: vbp.count(m)[0] for name, m in models.items()}
    rows = {}
    for batch in (1, 16):
        x = torch.randn(batch, 3, 224, 224)
        timed = time_variants(models, {"torch": x, "numpy": {"input": x.numpy()}}, folder, args.rounds, args.threads, x)
        rows[batch] = {name: {**t, "macs_g": macs[name] / 1e9, "mac_ideal": macs["full"] / macs[name]}
                       for name, t in timed.items()}
    widths = {name: sorted(set(vbp.families.site_widths(m).values())) for name, m in models.items()}
    return {"rows": rows, "widths": {k: [min(v), max(v)] for k, v in widths.items()}}


def text(args, folder: str) -> dict:
    model, tokenizer = minilm.load_minilm()
    calibration = text_loader(minilm.calibration_sentences(64 if args.quick else 512), tokenizer, 32)
    evaluation = list(text_loader(minilm.evaluation_sentences(64 if args.quick else 500), tokenizer, 50))
    stats = vbp.calibrate(model, calibration, progress=False)
    reference = sentence_embeddings(model, evaluation)
    quality = {}
    for ratio in (0.3, 0.5, 0.7):
        for scope, pruned in prune_both(model, stats, ratio).items():
            if scope != "full":
                agreement = embedding_agreement(reference, sentence_embeddings(pruned, evaluation))
                quality[f"{scope} {ratio:.0%}"] = {**agreement, "macs_g": vbp.count(pruned)[0] / 1e9,
                                                   "widths": sorted(set(vbp.families.site_widths(pruned).values()))}
    models = prune_both(model, stats, 0.5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 64), generator=g)
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    example = {"input_ids": ids[:1]}
    timed = time_variants(models, {"torch": feeds, "numpy": {k: v.numpy() for k, v in feeds.items()}}, folder,
                          args.rounds, args.threads, example)
    macs = {name: vbp.count(m)[0] for name, m in models.items()}  # at 128 tokens: the MAC ratio is what matters
    speed = {name: {**t, "mac_ideal": macs["full"] / macs[name]} for name, t in timed.items()}
    return {"quality": quality, "speed": speed}


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']}; torch {result['torch']}, onnxruntime {result['onnxruntime']}, "
             f"{result['threads']} threads each; {result['rounds']} rounds, medians; {result['date']}.", ""]
    lines += ["| DeiT-S 50% | batch | MACs (G) | eager ms | ORT ms | ORT/eager | speed-up eager | speed-up ORT | "
              "MAC ideal | ORT speed-up / ideal | ORT max rel err |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for batch, rows in result["deit"]["rows"].items():
        full = rows["full"]
        for name, r in rows.items():
            se, so = full["eager_ms"] / r["eager_ms"], full["ort_ms"] / r["ort_ms"]
            lines.append(f"| {name} | {batch} | {r['macs_g']:.2f} | {r['eager_ms']:.1f} | {r['ort_ms']:.1f} | "
                         f"{r['ort_ms'] / r['eager_ms']:.2f} | {se:.2f}x | {so:.2f}x | {r['mac_ideal']:.2f}x | "
                         f"{so / r['mac_ideal']:.0%} | {r['max_rel_error']:.1e} |")
    lines += ["", f"DeiT-S widths (min, max kept per MLP): {result['deit']['widths']}", ""]
    lines += ["| MiniLM | cosine | nn agreement | MACs (G, 128 tokens) | kept widths |", "|---|---|---|---|---|"]
    for name, q in result["minilm"]["quality"].items():
        widths = q["widths"] if len(q["widths"]) == 1 else f"{q['widths'][0]}-{q['widths'][-1]}"
        lines.append(f"| {name} | {q['cosine']:.3f} | {q['nn_agreement']:.3f} | {q['macs_g']:.2f} | {widths} |")
    lines += ["", "| MiniLM 50%, 32 x 64 tokens | eager ms | ORT ms | speed-up eager | speed-up ORT | MAC ideal |",
              "|---|---|---|---|---|---|"]
    speed = result["minilm"]["speed"]
    for name, r in speed.items():
        lines.append(f"| {name} | {r['eager_ms']:.1f} | {r['ort_ms']:.1f} | {speed['full']['eager_ms'] / r['eager_ms']:.2f}x | "
                     f"{speed['full']['ort_ms'] / r['ort_ms']:.2f}x | {r['mac_ideal']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/deploy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer calibration and evaluation samples (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    with tempfile.TemporaryDirectory() as folder:
        result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                  "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "threads": args.threads,
                  "rounds": args.rounds, "date": time.strftime("%Y-%m-%d"),
                  "deit": deit(args, folder), "minilm": text(args, folder)}
    result["seconds"] = time.time() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "deploy.json").write_text(json.dumps(result, indent=1))
    (out / "deploy.md").write_text(markdown(result))
    print(markdown(result))
    print(f"{result['seconds']:.0f} s; wrote {out}/deploy.json and deploy.md")


if __name__ == "__main__":
    main()
