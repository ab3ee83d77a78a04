"""Distilling a causal LM without narrowing it: text its unpruned model writes itself, and the token-level
measures that say how closely a pruned one follows it.

A short distillation on a narrow corpus (docstrings, say) narrows the model: the student matches the teacher
only where that text goes, and drifts everywhere else (every continuation turned into digit runs in one such
run). LLM pruners distil on text the unpruned model generates itself ("data-free"): it covers what the model
does, not what one corpus holds. `teacher_texts` samples it from varied short prompts (generic openings of
prose, letters, questions, instructions, news, code, maths: assets/distill_prompts.txt, none of the prompts
`vbp eval` measures generation with), at temperature 1 and top-p 0.95 (the model's own distribution, minus its
unreliable tail), `NEW_TOKENS` new tokens each, seeded: the same seed gives the same texts on the same machine.
Every `HELD_OUT_EVERY`-th prompt is kept out of training: the texts it starts are the "general" validation
set, on which `TokenReference` measures the student's fidelity to the teacher's own writing (a teacher-forced
stand-in for generation fidelity, cheap enough to measure every round). The texts are cached in the run's
folder (`teacher_text.jsonl`, a header line and one JSON object a text), so a resumed run trains on the same.

`TokenReference` compares a causal LM with its teacher on tokenized text: the student's perplexity against the
teacher's, the token-level KL(teacher || student) at temperature 1 and the top-1 agreement of their next-token
predictions over real tokens, and (optionally) the sentence-embedding agreement encoders are judged by.
"""

import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import VbpError
from ..files import write_text_atomic
from ..models import model_name
from .distill import soft_kl
from .text import embedding_agreement

PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "distill_prompts.txt"
CACHE = "teacher_text.jsonl"  # in the fine-tuning output folder
FORMAT = "vbp-teacher-text/1"
NEW_TOKENS = 64  # new tokens per text
TEMPERATURE = 1.0
TOP_P = 0.95
BATCH = 64  # texts generated at once: decoding is memory-bound, so a step of 64 costs about what one of 8 does
HELD_OUT_EVERY = 8  # every 8th prompt starts validation texts only
AUTO_BATCHES = (1, 4)  # the default: as many texts as training sentences, in 1 to 4 batches of BATCH
BUDGET_SHARE = 0.25  # under a time budget, the default generates for at most this share of it


def distill_prompts(path: str | Path = PROMPTS) -> list[str]:
    """The prompts of `path`, one a line (`\\n` in a line is a line break; empty lines are skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [line.replace("\\n", "\n") for line in lines if line.strip()]
    if len(prompts) < HELD_OUT_EVERY:
        raise VbpError(f"{path} holds {len(prompts)} prompts: give at least {HELD_OUT_EVERY}")
    return prompts


def split_prompts(prompts: list[str]) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts): every HELD_OUT_EVERY-th prompt is held out."""
    held = set(range(HELD_OUT_EVERY - 1, len(prompts), HELD_OUT_EVERY))
    return [p for i, p in enumerate(prompts) if i not in held], [prompts[i] for i in sorted(held)]


def held_out_count(count: int) -> int:
    """How many validation texts go with `count` training texts: a third of them, 4 to 16 (none for none)."""
    return 0 if count == 0 else min(16, max(4, count // 3))


def auto_count(sentences: int, budget_s: float | None = None, batch_s: float | None = None) -> int:
    """The default number of training texts: about as many as the user's `sentences`, filling 1 to 4 whole
    batches with the held-out texts (64 - 16, 128 - 16, ...); under a time budget of `budget_s` seconds, only
    the batches that fit BUDGET_SHARE of it at `batch_s` seconds a batch (0 when not even one does)."""
    batches = min(max(math.ceil((sentences + 16) / BATCH), AUTO_BATCHES[0]), AUTO_BATCHES[1])
    if budget_s is not None and batch_s is not None:
        batches = min(batches, int(BUDGET_SHARE * budget_s // max(batch_s, 1e-9)))
    return max(BATCH * batches - 16, 0)


def _config(model: nn.Module, tokenizer, new_tokens: int):
    """Sampling at TEMPERATURE with nucleus TOP_P and no top-k, `new_tokens` new tokens, stopping at the model's
    end-of-sequence token: a configuration of its own, so that settings a model ships with do not apply."""
    from transformers import GenerationConfig

    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    return GenerationConfig(
        max_new_tokens=new_tokens, do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0, num_beams=1,
        use_cache=True, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
    )


def prompt_starts(prompts: list[str], count: int) -> list[str]:
    """The prompt each of `count` texts starts with: text i with prompt i mod len(prompts)."""
    return [prompts[i % len(prompts)] for i in range(count)]


@torch.inference_mode()
def generate_texts(
    teacher: nn.Module, tokenizer, starts: list[str], seed: int, new_tokens: int = NEW_TOKENS, progress: bool = False
) -> list[str]:
    """The text `teacher` writes from each prompt of `starts` (prompt included), sampled with `_config` in
    batches of BATCH; batch b is drawn from torch's RNG seeded with (seed, b), so a seed gives the same texts."""
    if new_tokens < 1:
        raise VbpError(f"the number of new tokens must be at least 1, got {new_tokens}")
    device = next(teacher.parameters()).device
    config, texts = _config(teacher, tokenizer, new_tokens), []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # new tokens follow every prompt's last one
    was_training = teacher.training
    teacher.eval()
    try:
        batches = [starts[i : i + BATCH] for i in range(0, len(starts), BATCH)]
        for b, batch in enumerate(batches):
            if progress:
                print(f"teacher text: batch {b + 1}/{len(batches)} ({len(batch)} texts)", file=sys.stderr, flush=True)
            inputs = {k: v.to(device) for k, v in tokenizer(batch, return_tensors="pt", padding=True).items()}
            inputs.pop("token_type_ids", None)
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed * 1_000_003 + b)
                out = teacher.generate(**inputs, generation_config=config)
            texts += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        teacher.train(was_training)
    return texts


@torch.inference_mode()
def batch_seconds(teacher: nn.Module, new_tokens: int = NEW_TOKENS) -> float:
    """About how long one batch of BATCH texts takes to write: `new_tokens` + 1 forward passes of BATCH single
    tokens (a decoding step reads every weight, as such a pass does), timed on the second of two."""
    device = next(teacher.parameters()).device
    ids = torch.zeros(BATCH, 1, dtype=torch.long, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    teacher(input_ids=ids)
    sync()
    started = time.perf_counter()
    teacher(input_ids=ids)
    sync()
    return (new_tokens + 1) * (time.perf_counter() - started)


def _header(teacher: nn.Module, count: int, held_out: int, seed: int, new_tokens: int, prompts: list[str]) -> dict:
    digest = hashlib.blake2b("\n".join(prompts).encode(), digest_size=8).hexdigest()
    return {
        "format": FORMAT, "model": model_name(teacher), "count": count, "held_out": held_out, "seed": seed,
        "new_tokens": new_tokens, "temperature": TEMPERATURE, "top_p": TOP_P, "prompts": digest,
    }


def _read_cache(path: Path, header: dict) -> tuple[list[str], list[str]] | None:
    """The (training, held-out) texts of a cache written with `header`; None when there is none, or it was
    written with other settings or is damaged (it is written again)."""
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        if json.loads(lines[0]) != header:
            return None
        rows = [json.loads(line) for line in lines[1:]]
        train = [r["text"] for r in rows if not r["held_out"]]
        held = [r["text"] for r in rows if r["held_out"]]
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return None
    ok = len(train) == header["count"] and len(held) == header["held_out"] and all(isinstance(t, str) for t in train + held)
    return (train, held) if ok else None


def cached_texts(
    teacher: nn.Module, count: int, seed: int, cache: str | Path | None, new_tokens: int = NEW_TOKENS,
    prompts: list[str] | None = None,
) -> tuple[list[str], list[str]] | None:
    """What `teacher_texts` would return from `cache`, or None when it would generate them."""
    if cache is None:
        return None
    prompts = distill_prompts() if prompts is None else prompts
    return _read_cache(Path(cache), _header(teacher, count, held_out_count(count), seed, new_tokens, prompts))


def teacher_texts(
    teacher: nn.Module, tokenizer, count: int, seed: int, cache: str | Path | None = None, progress: bool = False,
    new_tokens: int = NEW_TOKENS, prompts: list[str] | None = None,
) -> tuple[list[str], list[str]]:
    """(`count` training texts, `held_out_count(count)` validation texts) that `teacher` writes (see the module's
    docstring): training texts from the training prompts, validation texts from the held-out ones, generated
    together (`generate_texts` with `seed`). With `cache` (a file path), read from it when it was written with the same settings and model,
    else generated and written there."""
    prompts = distill_prompts() if prompts is None else prompts
    held_out = held_out_count(count)
    header = _header(teacher, count, held_out, seed, new_tokens, prompts)
    if cache is not None and (found := _read_cache(Path(cache), header)) is not None:
        return found
    if count < 0:
        raise VbpError(f"the number of texts must be at least 0, got {count}")
    train_prompts, held_prompts = split_prompts(prompts)
    starts = prompt_starts(train_prompts, count) + prompt_starts(held_prompts, held_out)
    texts = generate_texts(teacher, tokenizer, starts, seed, new_tokens, progress)  # in one run of batches
    train, held = texts[:count], texts[count:]
    if cache is not None:
        rows = [{"held_out": False, "text": t} for t in train] + [{"held_out": True, "text": t} for t in held]
        lines = [json.dumps(header)] + [json.dumps(r, ensure_ascii=False) for r in rows]
        write_text_atomic(cache, "\n".join(lines) + "\n")
    return train, held


def _pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the last hidden states [B, T, H] over real tokens, L2-normalised, float64 [B, H]."""
    weights = mask.unsqueeze(-1).double()
    return nn.functional.normalize((hidden.double() * weights).sum(1) / weights.sum(1).clamp_min(1), dim=-1)


class TokenReference:
    """A causal LM's teacher on tokenized batches (re-iterable; each with an attention mask), to compare
    students with: its perplexity (and, with `embeddings`, its sentence embeddings) taken once; `compare(model)`
    runs the teacher again per batch (its logits over a vocabulary are too large to keep) and returns, over real
    tokens: perplexity and reference_perplexity (next-token, as `vbp.workflows.text.perplexity`), token_kl
    (mean KL(teacher || model) of the next-token distributions, temperature 1), top1_agreement (the share of
    positions where both predict the same next token), then cosine and nn_agreement of the mean-pooled last
    hidden states (`embedding_agreement`) with `embeddings`. Keys get `prefix`."""

    def __init__(self, teacher: nn.Module, batches, embeddings: bool = True, prefix: str = ""):
        self.teacher, self.batches, self.embeddings, self.prefix = teacher, list(batches), embeddings, prefix
        if not self.batches:
            raise VbpError("no text to validate on")
        nll, count, pooled = self._pass(teacher, None)
        if count == 0:
            raise VbpError("the validation text has no sentence of two or more tokens to measure perplexity on")
        self.perplexity = math.exp(nll / count)
        self.reference_embeddings = torch.cat(pooled) if embeddings else None

    @torch.inference_mode()
    def _pass(self, model: nn.Module, sums: dict | None):
        """One pass of `model` over the batches: (summed next-token NLL, its count, pooled embeddings); with
        `sums`, the teacher's predictions are compared with the model's into it (token_kl, top1, tokens)."""
        device = next(model.parameters()).device
        nll, count, pooled = 0.0, 0, []
        for batch in self.batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            mask = batch["attention_mask"].bool()
            out = model(**batch, output_hidden_states=self.embeddings)
            logits = out.logits.float()
            pairs = mask[:, 1:] & mask[:, :-1]
            losses = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
            nll += float(losses.masked_select(pairs).double().sum())
            count += int(pairs.sum())
            if self.embeddings:
                pooled.append(_pooled(out.hidden_states[-1], mask).cpu())
            if sums is not None:
                real = logits[mask]  # [N, V]: real tokens only
                teacher = self.teacher(**batch).logits.float()[mask]
                sums["token_kl"] += float(soft_kl(real, teacher, 1.0).double().sum())
                sums["top1"] += int((real.argmax(-1) == teacher.argmax(-1)).sum())
                sums["tokens"] += real.shape[0]
        return nll, count, pooled

    def compare(self, model: nn.Module) -> dict[str, float]:
        sums = {"token_kl": 0.0, "top1": 0, "tokens": 0}
        nll, count, pooled = self._pass(model, sums)
        result = {
            "perplexity": math.exp(nll / count),
            "reference_perplexity": self.perplexity,
            "token_kl": sums["token_kl"] / sums["tokens"],
            "top1_agreement": sums["top1"] / sums["tokens"],
        }
        if self.embeddings:
            result.update(embedding_agreement(self.reference_embeddings, torch.cat(pooled)))
        return {self.prefix + k: v for k, v in result.items()}
