"""Text for calibration and evaluation: a file of sentences, batched through a model's tokenizer, and the
sentence-embedding measures that compare a pruned text encoder with its original.

A batch is the tokenizer's output (input_ids, attention_mask, ...): `vbp.calibrate` runs the model on it as
keyword arguments and leaves padding out of the statistics.
"""

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import VbpError
from ..families import gguf
from ..files import check_input_file

MAX_TOKENS = 128  # sentences are truncated to this many tokens
MIN_TOKENIZER_FRACTION = 0.5  # a tokenizer with fewer tokens than this share of the embedding rows is not the model's


def read_sentences(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """The non-empty lines of a UTF-8 text file (at most `limit`)."""
    path = Path(path)
    if not path.is_file():
        raise VbpError(f"text file {path} does not exist; give a file with one sentence per line")
    check_input_file(path, "text file")  # unreadable: said as such
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise VbpError(f"{path} is not UTF-8 text ({exc}); give a text file with one sentence per line") from exc
    sentences = [line for line in lines if line][:limit]
    if not sentences:
        raise VbpError(f"{path} holds no sentences; give a text file with one sentence per line")
    return sentences


class Sentences(Dataset):
    """A list of sentences as a data set (items are strings; `Tokenize` batches them with `tokenizer`)."""

    def __init__(self, sentences: list[str], tokenizer=None):
        self.sentences = sentences
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> str:
        return self.sentences[i]


class Tokenize:
    """collate_fn: a list of sentences -> the tokenizer's padded tensors (a dict), at most MAX_TOKENS each."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        out = self.tokenizer(sentences, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        return dict(out)


def text_loader(sentences: list[str] | Dataset, tokenizer, batch_size: int) -> DataLoader:
    """Tokenized batches of `sentences` in a fixed order."""
    if batch_size < 1:
        raise VbpError(f"batch size must be at least 1, got {batch_size}")
    data = sentences if isinstance(sentences, Dataset) else Sentences(sentences)
    return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=Tokenize(tokenizer))


def tokenizer_of(model: nn.Module):
    """The tokenizer saved beside a Hugging Face model (read from the folder or cache it was loaded from; a gguf:
    model's from the cache folder of its file)."""
    config = getattr(model, "config", None)
    path = str(gguf.folder_of(model)) if gguf.owns(model) else getattr(config, "_name_or_path", "")
    if not path:
        raise VbpError("text data needs a Hugging Face model loaded from a folder (hf:DIR) that holds its tokenizer")
    from transformers import AutoTokenizer

    from ..families.hf import check_tokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise VbpError(f"cannot load the tokenizer of {path}: {exc}") from exc
    check_tokenizer(model, tokenizer, path)
    check_tokenizer_complete(model, tokenizer, path)
    if tokenizer.pad_token is None:  # GPT-2 and LLaMA tokenizers have none; padding is masked out anyway
        if tokenizer.eos_token is None:
            raise VbpError(f"the tokenizer of {path} has neither a padding nor an end-of-sequence token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", 0) is None:  # a sequence classifier finds each sentence's end by it
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def check_tokenizer_complete(model: nn.Module, tokenizer, source) -> None:
    """Refuse a tokenizer with far fewer tokens than the model's embedding table has rows: a folder without its
    tokenizer files gets a stand-in from transformers (BERT's: 5 tokens, every word [UNK]), and a model
    calibrated or evaluated through it sees nothing of the text. (A table a little larger than the tokenizer,
    padded to a round size, is common and fine.)"""
    try:
        rows = model.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):  # no token embedding table
        return
    if len(tokenizer) < rows * MIN_TOKENIZER_FRACTION:
        raise VbpError(
            f"the tokenizer of {source} has {len(tokenizer)} tokens for an embedding table of {rows} rows: its "
            "tokenizer files are missing (transformers made a stand-in that reads every word as unknown) or are "
            "another model's; save the model's own tokenizer beside it (tokenizer.save_pretrained(DIR))"
        )


@torch.inference_mode()
def sentence_embeddings(model: nn.Module, batches) -> torch.Tensor:
    """Mean-pooled last hidden states over each sentence's real tokens, L2-normalised, float64 [N, H]. Works
    for a bare encoder and for a model with a head (its last hidden state, not its logits)."""
    device = next(model.parameters()).device
    out = []
    for batch in batches:
        hidden = model(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=True).hidden_states[-1]
        hidden = hidden.double()
        mask = batch["attention_mask"].to(device).unsqueeze(-1).double()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        out.append(nn.functional.normalize(pooled, dim=-1).cpu())
    return torch.cat(out)


def embedding_agreement(reference: torch.Tensor, embeddings: torch.Tensor) -> dict[str, float]:
    """How close a model's embeddings [N, H] stay to the reference model's, both L2-normalised:
    cosine: mean cosine similarity of each sentence's two embeddings;
    nn_agreement: fraction of sentences whose nearest other sentence (by cosine) is the same under both."""
    if reference.shape != embeddings.shape or reference.shape[0] < 2:
        raise VbpError(f"need two [N >= 2, H] embedding sets of one shape, got {reference.shape} and {embeddings.shape}")

    def nearest(e: torch.Tensor) -> torch.Tensor:
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return sim.argmax(1)

    return {
        "cosine": float((reference * embeddings).sum(1).mean()),
        "nn_agreement": float((nearest(reference) == nearest(embeddings)).double().mean()),
    }


def is_causal_lm(model: nn.Module) -> bool:
    """A Hugging Face model with a causal language-modelling head (GPT-2, LLaMA, Qwen, ...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


@torch.inference_mode()
def perplexity(model: nn.Module, batches) -> float:
    """exp of the mean next-token negative log-likelihood over the real tokens of tokenized batches (each
    sentence's first token is predicted by nothing and not counted); accumulated in float64."""
    device = next(model.parameters()).device
    total, count = torch.zeros((), dtype=torch.float64), 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**batch).logits[:, :-1].float()
        targets = batch["input_ids"][:, 1:]
        real = batch["attention_mask"][:, 1:].bool() & batch["attention_mask"][:, :-1].bool()
        nll = nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        total += nll.masked_select(real).double().sum().cpu()
        count += int(real.sum())
    if count == 0:
        raise VbpError("the text has no sentence of two or more tokens to measure perplexity on")
    return float(torch.exp(total / count))


class TextReference:
    """The unpruned model's measures on tokenized batches (re-iterable), taken once; `compare(model)` says how
    close a pruned model stays to it: `embedding_agreement` of their sentence embeddings, and for causal LMs
    the perplexity of both."""

    def __init__(self, reference: nn.Module, batches):
        self.batches = list(batches)
        self.embeddings = sentence_embeddings(reference, self.batches)
        self.perplexity = perplexity(reference, self.batches) if is_causal_lm(reference) else None

    def compare(self, model: nn.Module) -> dict[str, float]:
        result = embedding_agreement(self.embeddings, sentence_embeddings(model, self.batches))
        if self.perplexity is not None:
            result.update(perplexity=perplexity(model, self.batches), reference_perplexity=self.perplexity)
        return result


def text_fidelity(reference: nn.Module, model: nn.Module, batches) -> dict[str, float]:
    """`TextReference(reference, batches).compare(model)`: one comparison."""
    return TextReference(reference, batches).compare(model)
