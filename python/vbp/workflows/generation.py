"""A pruned causal LM judged as its users judge it: what it writes and how fast.

Generation fidelity (`generation_fidelity`, `GenerationReference`): the unpruned and the pruned model continue
each prompt of a fixed set (`llm_prompts`: 24 short prompts, facts, code and stories, in
assets/llm_prompts.txt) greedily, batch 1 with a KV cache, and their continuations are compared token by
token; the pruned model's perplexity on the unpruned model's own continuations ("self-generated perplexity")
is set against the unpruned model's perplexity on them.

Speed (`tokens_per_s`): prefill tokens/s (one 128-token prompt) and decode tokens/s (batch 1, 64 new tokens
after it, KV cache) of both models, timed in turn (`vbp.timing`), beside the speed-ups the arithmetic allows:
the ratio of MACs for prefill (compute-bound) and of weight bytes read per token for decode (memory-bound).

Continuations are token ids throughout (never decoded and re-tokenized). A continuation ends where
`generate` stops: after `new_tokens` tokens or at the model's end-of-sequence token, which it includes.
"""

import copy
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..count import macs_of
from ..errors import VbpError
from ..timing import interleaved_medians

PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "llm_prompts.txt"
NEW_TOKENS = 32  # greedy continuation length of the fidelity measure
PREFILL_TOKENS = 128  # the prompt the prefill speed is measured on
DECODE_TOKENS = 64  # tokens decoded after it for the decode speed
ROUNDS = 5  # timed rounds of each model (medians)


def llm_prompts(path: str | Path = PROMPTS) -> list[str]:
    """The prompts of `path`, one a line (`\\n` in a line is a line break; empty lines are skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [line.replace("\\n", "\n") for line in lines if line.strip()]
    if not prompts:
        raise VbpError(f"{path} holds no prompts")
    return prompts


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def prompt_ids(tokenizer, prompts: list[str]) -> list[torch.Tensor]:
    """Each prompt tokenized as the tokenizer does by default (its special tokens included): int64 [P_i]."""
    ids = [torch.as_tensor(tokenizer(p)["input_ids"], dtype=torch.long) for p in prompts]
    if any(len(i) == 0 for i in ids):
        raise VbpError("a prompt tokenizes to no tokens")
    return ids


def _greedy_config(model: nn.Module, new_tokens: int, pad_token_id: int | None):
    """Greedy decoding of `new_tokens` tokens, stopping at the model's end-of-sequence token: a configuration of
    its own, so that sampling settings a model ships with (temperature, top_p) neither apply nor warn."""
    from transformers import GenerationConfig

    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    return GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, num_beams=1, use_cache=True, eos_token_id=eos, pad_token_id=pad
    )


@torch.inference_mode()
def greedy_continuations(
    model: nn.Module, prompts: list[torch.Tensor], new_tokens: int = NEW_TOKENS, pad_token_id: int | None = None
) -> list[torch.Tensor]:
    """The greedy continuation of each prompt [P_i] by `model`, batch 1 through `generate(do_sample=False)`
    with its KV cache: int64 [N_i], 1 <= N_i <= new_tokens (shorter when it ends with end-of-sequence), on
    the CPU."""
    if new_tokens < 1:
        raise VbpError(f"the number of new tokens must be at least 1, got {new_tokens}")
    model.eval()
    device, config = _device(model), _greedy_config(model, new_tokens, pad_token_id)
    out = []
    for ids in prompts:
        ids = ids.to(device)[None]
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        out.append(generated[0, ids.shape[1]:].cpu())
    return out


def matched_prefix(reference: list[int], tokens: list[int]) -> int:
    """How many leading tokens of `tokens` equal `reference`'s (the length of their common prefix)."""
    n = 0
    for a, b in zip(reference, tokens):
        if a != b:
            break
        n += 1
    return n


def token_agreement(references: list[torch.Tensor], continuations: list[torch.Tensor]) -> dict[str, float]:
    """How closely `continuations` follow `references` (both [N_i] per prompt):
    prefix_match: the mean over prompts of the fraction of the reference's tokens matched before the first
    divergence (matched_prefix / N_i of the reference; 1 where all match);
    exact_match: the fraction of prompts whose continuation is the reference's, token for token."""
    if len(references) != len(continuations) or not references:
        raise VbpError(f"need one continuation per reference, got {len(continuations)} for {len(references)}")
    prefix, exact = 0.0, 0
    for ref, got in zip(references, continuations):
        ref, got = ref.tolist(), got.tolist()
        prefix += matched_prefix(ref, got) / len(ref)
        exact += ref == got
    return {"prefix_match": prefix / len(references), "exact_match": exact / len(references)}


@torch.inference_mode()
def continuation_perplexity(model: nn.Module, prompts: list[torch.Tensor], continuations: list[torch.Tensor]) -> float:
    """exp of the mean negative log-likelihood of the continuation tokens [N_i], each given its prompt [P_i] and
    the continuation tokens before it (one forward pass over [1, P_i + N_i] per prompt; prompt tokens are not
    scored); accumulated in float64."""
    device = _device(model)
    total, count = torch.zeros((), dtype=torch.float64), 0
    for prompt, continuation in zip(prompts, continuations):
        ids = torch.cat([prompt, continuation]).to(device)[None]
        start = len(prompt) - 1  # the logits at position t predict token t + 1
        logits = model(input_ids=ids, use_cache=False).logits[0, start:-1].float()
        nll = nn.functional.cross_entropy(logits, continuation.to(device), reduction="none")
        total += nll.double().sum().cpu()
        count += len(continuation)
    if count == 0:
        raise VbpError("no continuation tokens to measure perplexity on")
    return float(torch.exp(total / count))


class GenerationReference:
    """The unpruned model's greedy continuations of the prompts and its own perplexity on them, taken once;
    `compare(model)` says how closely another model follows it."""

    def __init__(self, reference: nn.Module, tokenizer, prompts: list[str] | None = None, new_tokens: int = NEW_TOKENS):
        self.prompts = prompt_ids(tokenizer, llm_prompts() if prompts is None else prompts)
        self.new_tokens, self.pad_token_id = new_tokens, tokenizer.pad_token_id
        self.continuations = greedy_continuations(reference, self.prompts, new_tokens, self.pad_token_id)
        self.perplexity = continuation_perplexity(reference, self.prompts, self.continuations)

    def compare(self, model: nn.Module) -> dict[str, float]:
        """generation_prefix_match, generation_exact_match (`token_agreement` of the model's greedy continuations
        with the reference's), self_generated_perplexity (the model's perplexity on the reference's
        continuations) and reference_self_generated_perplexity (the reference's own), with the number of prompts
        and of new tokens."""
        continuations = greedy_continuations(model, self.prompts, self.new_tokens, self.pad_token_id)
        agreement = token_agreement(self.continuations, continuations)
        return {
            "generation_prefix_match": agreement["prefix_match"],
            "generation_exact_match": agreement["exact_match"],
            "self_generated_perplexity": continuation_perplexity(model, self.prompts, self.continuations),
            "reference_self_generated_perplexity": self.perplexity,
            "generation_prompts": len(self.prompts),
            "generation_new_tokens": self.new_tokens,
        }


def generation_fidelity(
    reference: nn.Module, model: nn.Module, tokenizer, prompts: list[str] | None = None, new_tokens: int = NEW_TOKENS
) -> dict[str, float]:
    """`GenerationReference(reference, tokenizer, prompts, new_tokens).compare(model)`: one comparison."""
    return GenerationReference(reference, tokenizer, prompts, new_tokens).compare(model)


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights one decoded token reads (batch 1): every parameter once (tied ones once), except the
    tables of nn.Embedding layers, of which a token reads one row (left out), unless the table is also the
    output head's weight (tied embeddings: the head reads it whole to give the logits). Buffers and the KV
    cache are not counted."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    tables.discard(id(head_weight))
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in tables)


def prefill_prompt(tokenizer, tokens: int = PREFILL_TOKENS, prompts: list[str] | None = None) -> torch.Tensor:
    """A batch-1 prompt of exactly `tokens` tokens: the prompt set's text, one prompt a line, tokenized and
    repeated as often as needed: int64 [1, tokens]."""
    if tokens < 1:
        raise VbpError(f"the prompt must have at least 1 token, got {tokens}")
    ids = torch.as_tensor(tokenizer("\n".join(llm_prompts() if prompts is None else prompts))["input_ids"])
    return ids.repeat(-(-tokens // len(ids)))[:tokens][None].long()


def _prefill(model: nn.Module, ids: torch.Tensor):
    """The prompt [1, T] through the model as `generate` runs it: KV cache built, logits of the last position
    only. Returns the cache."""
    return model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values


def _decode(model: nn.Module, cache, token: torch.Tensor, steps: int) -> None:
    """`steps` greedy decode steps, batch 1, from a copy of the prompt's KV cache (a few MB copied: small
    beside the steps, each of which reads every weight) and its next token [1, 1]."""
    cache = copy.deepcopy(cache)
    for _ in range(steps):
        token = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)


@torch.inference_mode()
def tokens_per_s(
    reference: nn.Module,
    model: nn.Module,
    tokenizer,
    prefill_tokens: int = PREFILL_TOKENS,
    decode_tokens: int = DECODE_TOKENS,
    rounds: int = ROUNDS,
) -> dict[str, float]:
    """Prefill and decode speed of `model` against `reference`, batch 1 on their device, timed in turn (medians
    of `rounds`, `vbp.timing.interleaved_medians`):
    prefill_tokens_per_s: tokens of a `prefill_tokens` prompt (`prefill_prompt`) per second of one forward pass
    that builds its KV cache (logits of the last position only, as `generate` does);
    decode_tokens_per_s: tokens per second of `decode_tokens` greedy steps after that prompt, KV cache;
    each with reference_..., the measured ..._speedup (reference time / model time) and the ideal one:
    prefill_ideal_speedup, the ratio of the prefill's MACs (`vbp.count.macs_of`); decode_ideal_speedup, the
    ratio of weight bytes read per token (`weight_bytes_per_token`: decode is memory-bound); and
    weight_mb_per_token / reference_weight_mb_per_token (MB = 1e6 bytes)."""
    if decode_tokens < 1 or rounds < 1:
        raise VbpError(f"need at least 1 decode token and 1 round, got {decode_tokens} and {rounds}")
    models = {"model": model.eval(), "reference": reference.eval()}
    device = _device(model)
    ids = prefill_prompt(tokenizer, prefill_tokens).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    prefill = interleaved_medians({k: partial(_prefill, m, ids) for k, m in models.items()}, rounds, sync)
    caches = {k: _prefill(m, ids) for k, m in models.items()}
    token = ids[:, -1:]  # any token: decoding costs the same whatever it reads
    decode = interleaved_medians(
        {k: partial(_decode, m, caches[k], token, decode_tokens) for k, m in models.items()}, rounds, sync
    )
    macs = {k: macs_of(partial(_prefill, m, ids)) for k, m in models.items()}
    weights = {k: weight_bytes_per_token(m) for k, m in models.items()}
    return {
        "prefill_tokens_per_s": prefill_tokens / prefill["model"],
        "reference_prefill_tokens_per_s": prefill_tokens / prefill["reference"],
        "prefill_speedup": prefill["reference"] / prefill["model"],
        "prefill_ideal_speedup": macs["reference"] / macs["model"],
        "decode_tokens_per_s": decode_tokens / decode["model"],
        "reference_decode_tokens_per_s": decode_tokens / decode["reference"],
        "decode_speedup": decode["reference"] / decode["model"],
        "decode_ideal_speedup": weights["reference"] / weights["model"],
        "weight_mb_per_token": weights["model"] / 1e6,
        "reference_weight_mb_per_token": weights["reference"] / 1e6,
    }
