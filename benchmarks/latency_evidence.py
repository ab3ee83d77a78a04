"""Evidence for speed as a target (issue 15): the numbers of docs/latency.md and of its section in RESULTS.md.

For each model: calibrate, profile a latency table (timed), then for each target speed-up select widths by the
table (`vbp.select(target_speedup=...)`) and compare with `--ratio` plans of round-to 1 and round-to 8 whose ratio
is chosen to give the same measured latency (interpolated on a grid of ratios, all measured in turn with the full
model). The final pass per target times the full model, the latency-aware plan and both ratio plans in turn and
reports measured end-to-end speed-ups, the table's prediction, the MAC ideal and quality (timm models, random
weights: relative error of the logits on held-out random images; all-MiniLM-L6-v2, real weights: cosine and
nearest-neighbour agreement of the sentence embeddings on its evaluation sentences). Last, the issue's command
`vbp prune --model deit_small_patch16_224 ... --target-speedup 1.5 --latency-batch 16` and its measured speed-up.

    .venv/bin/python benchmarks/latency_evidence.py                       # all, then docs/latency.md updated
    .venv/bin/python benchmarks/latency_evidence.py --models deit_small_patch16_224 --no-write

Writes benchmarks/results/latency_cpu.json and replaces the marked blocks of docs/latency.md and
benchmarks/RESULTS.md. Run it on a quiet machine: timings taken while other processes run are noisy.
"""

import argparse
import copy
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np
import torch

import vbp
from vbp.batches import run_model
from vbp.families import site_widths
from vbp.files import write_text_atomic
from vbp.latency import profile
from vbp.latency.profile import latency_inputs
from vbp.models import model_device
from vbp.timing import interleaved_medians

ROOT = Path(__file__).resolve().parent.parent
MINILM = "all-MiniLM-L6-v2"
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
ROUND_TOS = (8, 1)
BEGIN, END = "<!-- latency-evidence:begin -->", "<!-- latency-evidence:end -->"
DONE_WHEN = (
    "prune --model deit_small_patch16_224 --data synthetic --num-batches 1 --batch-size 2 --target-speedup 1.5 "
    "--latency-batch 16"
)


class TimmCase:
    """A timm model with random weights (seed 0); random images for calibration, latency and held-out error."""

    def __init__(self, name: str, batch: int):
        torch.manual_seed(0)
        self.name, self.model = name, vbp.create_model(name)
        g = torch.Generator().manual_seed(1)
        self.calibration = [torch.randn(8, 3, 224, 224, generator=g) for _ in range(2)]
        self.held_out = torch.randn(8, 3, 224, 224, generator=g)
        self.latency_batch = latency_inputs(self.model, batch)
        with torch.inference_mode():
            self.reference = self.model(self.held_out)

    def quality(self, pruned) -> dict:
        return {"relative_error": float((pruned(self.held_out) - self.reference).norm() / self.reference.norm())}


class MiniLmCase:
    """all-MiniLM-L6-v2 (real weights): calibration sentences, a latency batch of `batch` sentences padded to
    64 tokens, and embedding agreement on the evaluation sentences."""

    def __init__(self, batch: int):
        from vbp.workflows.minilm import calibration_sentences, evaluation_sentences, load_minilm
        from vbp.workflows.text import embedding_agreement, sentence_embeddings, text_loader

        self.name = MINILM
        self.model, tokenizer = load_minilm()
        self.calibration = list(text_loader(calibration_sentences(), tokenizer, 32))
        self.evaluation = list(text_loader(evaluation_sentences(), tokenizer, 64))
        sentences = (evaluation_sentences() * batch)[:batch]
        self.latency_batch = dict(tokenizer(sentences, padding="max_length", truncation=True, max_length=64,
                                            return_tensors="pt"))
        self._embed, self._agree = sentence_embeddings, embedding_agreement
        self.reference = sentence_embeddings(self.model, self.evaluation)

    def quality(self, pruned) -> dict:
        return self._agree(self.reference, self._embed(pruned, self.evaluation))


def timed(models: dict, inputs, rounds: int) -> dict[str, float]:
    """Median ms of each model on `inputs`, all timed in turn."""
    device = model_device(next(iter(models.values())))
    return {k: 1e3 * v for k, v in interleaved_medians(
        {k: partial(run_model, m, inputs, device) for k, m in models.items()}, rounds).items()}


def macs(model) -> int:
    return vbp.count(model)[0]


@torch.inference_mode()
def run_case(case, targets: list[float], rounds: int) -> dict:
    model = case.model.eval()
    print(f"== {case.name}: calibrating", file=sys.stderr)
    stats = vbp.calibrate(model, case.calibration, progress=False)
    start = time.perf_counter()
    table = profile(model, case.latency_batch, rounds=rounds)
    profile_s = time.perf_counter() - start
    full_macs = macs(model)

    def pruned(plan):
        return vbp.prune(copy.deepcopy(model), plan, stats)

    latency_plans = {}
    for t in targets:
        try:
            latency_plans[t] = vbp.select(stats, target_speedup=t, latency=table)
        except vbp.VbpError as exc:
            latency_plans[t] = str(exc)
    ratio_plans = {(rt, r): vbp.select(stats, r, round_to=rt) for rt in ROUND_TOS for r in RATIOS}
    print(f"== {case.name}: the ratio grid, in turn", file=sys.stderr)
    grid = timed({"full": model, **{f"{rt}/{r}": pruned(p) for (rt, r), p in ratio_plans.items()},
                  **{f"t{t}": pruned(p) for t, p in latency_plans.items() if not isinstance(p, str)}},
                 case.latency_batch, rounds)
    rows = []
    for t, plan in latency_plans.items():
        if isinstance(plan, str):
            rows.append({"target": t, "error": plan})
            continue
        goal = grid[f"t{t}"]
        matched = {}
        for rt in ROUND_TOS:  # the ratio whose measured latency is the latency-aware plan's
            lat = np.minimum.accumulate([grid[f"{rt}/{r}"] for r in RATIOS])  # made non-increasing in the ratio
            ratio = float(np.interp(-goal, -lat, RATIOS))
            matched[rt] = round(ratio, 3)
        models = {"full": model, "latency": pruned(plan)}
        models.update({f"round_to_{rt}": pruned(vbp.select(stats, matched[rt], round_to=rt)) for rt in ROUND_TOS})
        print(f"== {case.name}: target {t}, in turn", file=sys.stderr)
        ms = timed(models, case.latency_batch, rounds + 2)
        row = {"target": t, "predicted": table.predict_speedup(plan.kept_widths), "widths": plan.kept_widths,
               "full_ms": ms["full"]}
        for k in ("latency", *(f"round_to_{rt}" for rt in ROUND_TOS)):
            row[k] = {"ms": ms[k], "measured": ms["full"] / ms[k], "mac_speedup": full_macs / macs(models[k]),
                      **case.quality(models[k])}
            if k != "latency":
                row[k]["ratio"] = matched[int(k.rsplit("_", 1)[1])]
                row[k]["predicted"] = table.predict_speedup(site_widths(models[k]))
        row["latency"]["ratio_removed"] = plan.ratio
        rows.append(row)
    return {"model": case.name, "table": {k: table.key[k] for k in ("batch", "runtime", "dtype", "device_name",
                                                                      "threads", "torch")},
            "tokens": [s.tokens for s in table.shapes], "profile_s": profile_s, "table_full_ms": table.full_ms,
            "table_fixed_ms": table.fixed_ms, "widths_measured": sum(len(c.widths) for c in table.curves),
            "ratio_grid_ms": grid, "rows": rows}


def done_when(threads: int) -> dict:
    """The issue's command at `threads` torch threads, its summary's latency part."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "vbp", *DONE_WHEN.split(), "--output", out, "--summary", f"{out}/s.json"]
        subprocess.run(cmd, check=True, stdout=sys.stderr, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        return json.loads(Path(f"{out}/s.json").read_text())["latency"]


def quality_text(q: dict) -> str:
    if "relative_error" in q:
        return f"{q['relative_error']:.3f}"
    return f"{q['cosine']:.3f} / {q['nn_agreement']:.2f}"


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"Measured {result['date']} by `benchmarks/latency_evidence.py` on {env['cpu']} ({env['threads']} threads), "
        f"torch {env['torch']}, fp32, eager. {env['note']}",
        "",
    ]
    for case in result["cases"]:
        quality = "rel. error" if case["model"] != MINILM else "cosine / NN agr."
        lines += [
            f"**{case['model']}**, batch {case['table']['batch']} ({case['tokens'][0]} rows per MLP): table "
            f"profiled in {case['profile_s']:.0f} s ({case['widths_measured']} widths), full model "
            f"{case['table_full_ms']:.0f} ms of which MLPs {case['table_full_ms'] - case['table_fixed_ms']:.0f} ms.",
            "",
            f"| target | predicted | measured | MAC ideal | {quality} | round-to 8: ratio, measured, {quality} | "
            f"round-to 1: ratio, measured, {quality} |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in case["rows"]:
            if "error" in row:
                lines.append(f"| {row['target']:.1f}x | {row['error']} | | | | | |")
                continue
            lat, r8, r1 = row["latency"], row["round_to_8"], row["round_to_1"]
            lines.append(
                f"| {row['target']:.1f}x | {row['predicted']:.2f}x | {lat['measured']:.2f}x | {lat['mac_speedup']:.2f}x | "
                f"{quality_text(lat)} | {r8['ratio']:.3f}, {r8['measured']:.2f}x, {quality_text(r8)} | "
                f"{r1['ratio']:.3f}, {r1['measured']:.2f}x, {quality_text(r1)} |"
            )
        lines.append("")
    if result.get("done_when"):
        d = result["done_when"]
        lines.append(
            f"`vbp {DONE_WHEN} --output o/`: predicted {d['predicted_speedup']:.2f}x, measured "
            f"{d['measured_speedup']:.2f}x ({d['reference_latency_ms']:.0f} -> {d['latency_ms']:.0f} ms), MACs alone "
            f"{d['mac_speedup']:.2f}x."
        )
    return "\n".join(lines) + "\n"


def replace_block(path: Path, text: str) -> None:
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block to fill")
    write_text_atomic(path, re.sub(f"{re.escape(BEGIN)}.*?{re.escape(END)}", lambda _: f"{BEGIN}\n{text}{END}", doc,
                                   flags=re.S))


def main() -> None:
    from vbp.latency.profile import cpu_name

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=f"deit_small_patch16_224,deit_base_patch16_224,{MINILM}")
    p.add_argument("--targets", default="1.2,1.4,1.6")
    p.add_argument("--batch", type=int, default=16, help="images per latency batch (MiniLM: twice as many sentences)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: torch's)")
    p.add_argument("--note", default="", help="a remark on the machine's state, printed with the results")
    p.add_argument("--no-done-when", action="store_true", help="skip the issue's vbp prune command")
    p.add_argument("--no-write", action="store_true", help="print only; write no files")
    args = p.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    torch.set_num_threads(args.threads)
    cases = []
    for name in args.models.split(","):
        case = MiniLmCase(2 * args.batch) if name == MINILM else TimmCase(name, args.batch)
        cases.append(run_case(case, targets, args.rounds))
    result = {
        "date": date.today().isoformat(),
        "environment": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "python": platform.python_version(), "note": args.note},
        "cases": cases,
        "done_when": None if args.no_done_when else done_when(args.threads),
    }
    text = markdown(result)
    print(text)
    if not args.no_write:
        write_text_atomic(ROOT / "benchmarks/results/latency_cpu.json", json.dumps(result, indent=1) + "\n")
        replace_block(ROOT / "docs/latency.md", text)
        replace_block(ROOT / "benchmarks/RESULTS.md", text)


if __name__ == "__main__":
    main()
