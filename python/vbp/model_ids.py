"""Model ids as users write them ("hf:DIR", "gguf:FILE", "py:MODULE:FUNCTION", a timm name) and their canonical
form."""

from pathlib import Path


def canonical_id(model_id: str) -> str:
    """The id with a local folder (hf:) or file (gguf:) written as its absolute resolved path, so that "hf:m/",
    "hf:./m" and "hf:/abs/m" name one model; other ids unchanged."""
    prefix, sep, rest = model_id.partition(":")
    if sep and rest and ((prefix == "hf" and Path(rest).is_dir()) or (prefix == "gguf" and Path(rest).is_file())):
        return f"{prefix}:{Path(rest).resolve()}"
    return model_id


def comparable_id(model_id: str) -> str:
    """The id as ids are compared: canonical, a timm name with or without "timm:"."""
    return canonical_id(model_id).removeprefix("timm:")


def same_model(a: str, b: str) -> bool:
    """Whether two ids name one model."""
    return comparable_id(a) == comparable_id(b)
