"""The demo's second part: VBP on a real trained text encoder, all-MiniLM-L6-v2, against the baselines.

Calibrate once on the embedded calibration sentences, prune at several rates by each method, and measure
on the disjoint evaluation sentences how close the pruned model's sentence embeddings stay to the original's
(mean cosine similarity, nearest-neighbour agreement).
"""

import copy
import time
from pathlib import Path

from ..calibrate import calibrate
from ..files import write_text_atomic
from ..method import Method
from ..prune import prune
from ..select import select
from .minilm import calibration_sentences, evaluation_sentences, load_minilm
from .text import embedding_agreement, sentence_embeddings, text_loader

RATES = (0.3, 0.5, 0.7)
METHODS = ("variance+mean", "variance+affine", "variance", "magnitude", "random")
CALIBRATION_SENTENCES = 1024
EVALUATION_SENTENCES = 512
BATCH = 64


def text_table(rows: list[dict]) -> str:
    """Markdown: one row per rate, cosine / nearest-neighbour agreement for each method."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| rate | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    for rate in dict.fromkeys(r["rate"] for r in rows):
        cells = {r["method"]: f"{r['cosine']:.3f} / {r['nn_agreement']:.3f}" for r in rows if r["rate"] == rate}
        lines.append(f"| {rate:.0%} | " + " | ".join(cells[m] for m in methods) + " |")
    return "\n".join(lines) + "\n"


def run_text_demo(output: Path = Path("out/demo"), rates=RATES, methods=METHODS) -> list[dict]:
    """Prints and writes (output/minilm_table.md) the table; returns its rows (method, rate, cosine, nn_agreement)."""
    start = time.perf_counter()
    model, tokenizer = load_minilm()
    calibration = text_loader(calibration_sentences(CALIBRATION_SENTENCES), tokenizer, BATCH)
    evaluation = text_loader(evaluation_sentences(EVALUATION_SENTENCES), tokenizer, BATCH)
    methods = [Method.parse(m) for m in methods]
    stats = calibrate(model, calibration, progress=False, covariance=any(m.needs_covariance for m in methods))
    reference = sentence_embeddings(model, evaluation)
    rows = []
    for rate in rates:
        for method in methods:
            plan = select(stats, rate, criterion=method.criterion, model=model)
            pruned = prune(copy.deepcopy(model), plan, stats, compensation=method.compensation)
            agreement = embedding_agreement(reference, sentence_embeddings(pruned, evaluation))
            rows.append({"method": str(method), "rate": rate, **agreement})
    table = text_table(rows)
    print(
        f"\nVBP on a real trained text encoder: all-MiniLM-L6-v2, calibrated on {CALIBRATION_SENTENCES} sentences, "
        f"measured on {EVALUATION_SENTENCES} others (mean cosine similarity / nearest-neighbour agreement of "
        "mean-pooled embeddings, pruned vs unpruned):"
    )
    print(table, end="")
    write_text_atomic(output / "minilm_table.md", table)
    print(f"written to {output / 'minilm_table.md'}; done in {time.perf_counter() - start:.1f} s")
    return rows
