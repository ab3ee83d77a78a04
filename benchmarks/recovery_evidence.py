"""Evidence for docs/recovery.md: all-MiniLM-L6-v2 pruned at several rates by VBP (variance+mean) and the best
affine method, one-shot and sequential, then distilled from the unpruned model on the embedded calibration
sentences; cosine / nearest-neighbour agreement of mean-pooled embeddings on 512 evaluation sentences of
other modules, before and after each run, with the CPU minutes each run took.

    python benchmarks/recovery_evidence.py --out benchmarks/results/recovery.json [--rows quick|more-text]
    python benchmarks/recovery_evidence.py --out benchmarks/results/recovery.json --tables   # its markdown

Each row is one run (its own warm-up and cosine schedule); nothing else should run on the machine meanwhile.
"""

import argparse
import copy
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch

import vbp
from vbp.files import write_text_atomic
from vbp.sequential import prune_sequential
from vbp.workflows.finetune import FinetuneConfig, finetune
from vbp.workflows.minilm import calibration_sentences, distillation_sentences, evaluation_sentences, load_minilm
from vbp.workflows.text import Sentences, text_fidelity, text_loader

CALIBRATION = 1024  # sentences the statistics are gathered on (the demo's)
EVALUATION = 512
METHODS = {"variance+mean": vbp.Mean(), "variance+affine": vbp.Affine()}
AFFINE = "variance+affine"
# (rate, method, sequential, epochs, changes to the recipe): rows with 0 epochs are "before"
FULL = [
    *[(r, m, False, e, {}) for r in (0.3, 0.5, 0.7) for m in METHODS for e in (0, 1, 3)],
    *[(r, m, True, 0, {}) for r in (0.5, 0.7) for m in METHODS],
    (0.5, AFFINE, True, 3, {}),
    *[(r, AFFINE, False, 10, {}) for r in (0.5, 0.7)],
    # what each part of the recipe adds, at 50%, 3 epochs
    (0.5, AFFINE, False, 3, {"kd_layers": False}),
    (0.5, AFFINE, False, 3, {"kd_pooled": 0.0}),
    (0.5, AFFINE, False, 3, {"kd_loss": "cosine"}),
    (0.5, AFFINE, False, 3, {"train_only": "mlp"}),
    (0.5, AFFINE, False, 3, {"training_sentences": CALIBRATION}),
]
QUICK = [(0.5, AFFINE, False, 0, {}), (0.5, AFFINE, False, 1, {"kd_layers": False, "training_sentences": 64})]
# more unlabelled text: the distillation sentences (other modules) too, 2.7x the sentences, 5 epochs
MORE_TEXT = [(r, AFFINE, False, 5, {"more_text": True}) for r in (0.5, 0.7)]
ROWS = {"full": FULL, "quick": QUICK, "more-text": MORE_TEXT}


def recipe(epochs: int, **changes) -> FinetuneConfig:
    """The defaults `vbp finetune` uses for an encoder (per-block and pooled targets: kd_layers None is on for
    text models), at `epochs`, with `changes`."""
    return FinetuneConfig(epochs=epochs, batch_size=32, lr=3e-4, **changes)


def tables(result: dict) -> str:
    """Markdown of a result file: cosine / neighbour agreement (CPU minutes of distillation) per row."""

    def cell(row: dict) -> str:
        minutes = f" ({row['train_minutes']:.1f} min)" if row["epochs"] else ""
        return f"{row['cosine']:.3f} / {row['nn_agreement']:.3f}{minutes}"

    rows = result["rows"]
    plain = [r for r in rows if not r["changes"]]
    lines = ["| rate | method | sequential | before | 1 epoch | 3 epochs | 10 epochs |", "|---:|---|---|---:|---:|---:|---:|"]
    for key in dict.fromkeys((r["rate"], r["method"], r["sequential"]) for r in plain):
        cells = {r["epochs"]: cell(r) for r in plain if (r["rate"], r["method"], r["sequential"]) == key}
        rate, method, sequential = key
        lines.append(f"| {rate:.0%} | {method} | {'yes' if sequential else 'no'} | "
                     + " | ".join(cells.get(e, "") for e in (0, 1, 3, 10)) + " |")
    lines += ["", "| 50%, variance+affine, 3 epochs | cosine / nn agreement (minutes) |", "|---|---:|"]
    for r in rows:
        if r["rate"] == 0.5 and r["method"] == AFFINE and r["epochs"] == 3 and not r["sequential"]:
            lines.append(f"| {', '.join(f'{k}={v}' for k, v in r['changes'].items()) or 'the recipe'} | {cell(r)} |")
    for r in rows:
        if "curve" in r:
            minutes = 0.0
            points = []
            for c in r["curve"]:
                minutes += c["seconds"] / 60
                points.append(f"{c['cosine']:.3f} ({minutes:.1f})")
            lines += ["", f"{r['rate']:.0%} {r['method']}, {r['epochs']} epochs on {r.get('training_sentences', result['training_sentences'])} sentences, "
                      "cosine after each epoch (minutes of distillation so far): " + ", ".join(points)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", choices=ROWS, default="full", help="which runs (quick: two, to check the script)")
    parser.add_argument("--tables", action="store_true", help="print the markdown tables of --out and stop")
    args = parser.parse_args()
    if args.tables:
        print(tables(json.loads(args.out.read_text())), end="")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_minilm()
    calibration = text_loader(calibration_sentences(CALIBRATION), tokenizer, 64)
    evaluation = list(text_loader(evaluation_sentences(EVALUATION), tokenizer, 64))
    shipped = calibration_sentences()  # every calibration sentence the project ships
    stats = vbp.calibrate(model, calibration, progress=False, covariance=True)
    setting = {
        "device": f"{cpu_name()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "calibration_sentences": CALIBRATION,
        "training_sentences": len(shipped),
        "evaluation_sentences": EVALUATION,
        "recipe": dataclasses.asdict(recipe(0)),
    }
    rows = []
    for rate, method, sequential, epochs, changes in ROWS[args.rows]:
        plan = vbp.select(stats, rate)
        started = time.perf_counter()
        if sequential:
            student, _ = prune_sequential(copy.deepcopy(model), plan, calibration, METHODS[method], progress=False)
        else:
            student = vbp.prune(copy.deepcopy(model), plan, stats, compensation=METHODS[method])
        row = {"rate": rate, "method": method, "sequential": sequential, "epochs": epochs, "changes": changes,
               "prune_minutes": (time.perf_counter() - started) / 60}
        if epochs:
            changes = dict(changes)
            sentences = shipped[: changes.pop("training_sentences", None)]
            train = Sentences(sentences + (distillation_sentences() if changes.pop("more_text", False) else []),
                              tokenizer)
            curve = Sentences(evaluation_sentences(EVALUATION), tokenizer) if epochs >= 5 else None
            history = finetune(student, train, curve, recipe(epochs, **changes), teacher=model, progress=False)
            row.update(train_minutes=sum(h["seconds"] for h in history) / 60, train_loss=history[-1]["train_loss"],
                       training_sentences=len(train))
            if curve is not None:
                row["curve"] = [{k: h[k] for k in ("epoch", "seconds", "cosine", "nn_agreement")} for h in history]
        row.update(text_fidelity(model, student, evaluation))
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_text_atomic(args.out, json.dumps({**setting, "rows": rows}, indent=1) + "\n")  # after every row
    print(f"wrote {args.out}")


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
