"""Evidence for docs/recovery.md: all-MiniLM-L6-v2 pruned at several rates by VBP (variance+mean) and the best
affine method, one-shot and sequential, then distilled from the unpruned model on the embedded calibration
sentences; cosine / nearest-neighbour agreement of mean-pooled embeddings on 512 evaluation sentences of
other modules, before and after each run, with the CPU minutes each run took.

    python benchmarks/recovery_evidence.py --out benchmarks/results/recovery.json [--quick]

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
from vbp.workflows.minilm import calibration_sentences, evaluation_sentences, load_minilm
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


def recipe(epochs: int, **changes) -> FinetuneConfig:
    """The defaults `vbp finetune` uses for an encoder (per-block and pooled targets: kd_layers None is on for
    text models), at `epochs`, with `changes`."""
    return FinetuneConfig(epochs=epochs, batch_size=32, lr=3e-4, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="two rows, to check the script")
    args = parser.parse_args()
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
    for rate, method, sequential, epochs, changes in QUICK if args.quick else FULL:
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
            train = Sentences(shipped[: changes.pop("training_sentences", None)], tokenizer)
            curve = Sentences(evaluation_sentences(EVALUATION), tokenizer) if epochs == 10 else None
            history = finetune(student, train, curve, recipe(epochs, **changes), teacher=model, progress=False)
            row.update(train_minutes=sum(h["seconds"] for h in history) / 60, train_loss=history[-1]["train_loss"])
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
