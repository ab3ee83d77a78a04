"""Pruned models in the formats people deploy with, loadable without vbp.

- `export_onnx(model, path, example)`: an ONNX file (torch.onnx's dynamo exporter, which needs onnxscript; dynamic
  batch axis, and sequence axis for text), checked after writing by onnxruntime against PyTorch on a fresh input of another batch size.
  Pruned MLPs are plain MatMul + GELU there; `vbp.compact` modules export as their eager maths.
- `export_hf(model, out_dir)`: a Hugging Face model whose MLP sites all keep one width (`select(scope="uniform")`)
  as a standard folder, config.json with that `intermediate_size`, model.safetensors, and the source folder's
  tokenizer/processor files (its whole sentence-transformers layout when it has modules.json), so that
  `transformers.AutoModel.from_pretrained(DIR)` (or `SentenceTransformer(DIR)`) loads it. Unequal widths are
  refused, or zero-padded to the widest with `pad_to_uniform=True` (exact outputs, but the padding costs speed).

Both write to a temporary name beside the target and rename it into place, so a failure leaves nothing half-written;
the folder is `vbp.output_folder`'s: recorded as an export of its model, swapped in whole.
"""

import contextlib
import copy
import io
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from ..compact import CompactMlp
from ..errors import VbpError
from ..families import find_sites
from ..files import atomic_path
from ..models import example_input
from ..output_folder import check_folder, model_id_of, staged_folder
from ..sites import set_submodule

OPSET = 18  # the dynamo exporter's own opset (others go through a version converter)
TOLERANCE = 1e-4  # largest max-relative error (fp32) accepted between onnxruntime and PyTorch
TEXT_TOKENS = 16  # sequence length of the example a text model is exported with
# Weight files of a source folder that describe the unpruned model: never copied into an export.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".ot", ".onnx", ".pt", ".pth", ".ckpt", ".gguf")
_NOT_COPIED = {"config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", "README.md"}


class EagerMlp(nn.Module):
    """fc2(GELU(fc1(x))) in plain PyTorch ops: what a `CompactMlp` computes, in a form exporters can trace."""

    def __init__(self, compact: CompactMlp):
        super().__init__()
        self.fc1, self.fc2, self.approximate = compact.fc1, compact.fc2, compact.approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x), approximate=self.approximate))


def eager_copy(model: nn.Module) -> nn.Module:
    """`model` with every CompactMlp swapped for the same maths in eager ops (a copy when there are any)."""
    compacts = [name for name, m in model.named_modules() if isinstance(m, CompactMlp)]
    if not compacts:
        return model
    model = copy.deepcopy(model)
    for name in compacts:
        module = model.get_submodule(name)
        if name:
            set_submodule(model, name, EagerMlp(module))
        else:
            model = EagerMlp(module)
    return model


# ---------------------------------------------------------------------------------------------------- ONNX


@contextlib.contextmanager
def _logging_off():
    """No log records of any logger (torch's exporter and onnxscript log through `logging`) inside the block."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


class _TextOutputs(nn.Module):
    """An HF text model called with (input_ids, attention_mask), returning its tensor outputs as a tuple."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.extra = {"use_cache": False} if hasattr(getattr(model, "config", None), "use_cache") else {}

    def call(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **self.extra)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return _tensors(self.call(input_ids, attention_mask))


class _ImageOutputs(nn.Module):
    """A model of one image tensor (an HF vision model takes it as pixel_values), its tensor outputs as a tuple."""

    def __init__(self, model: nn.Module, keyword: str | None):
        super().__init__()
        self.model, self.keyword = model, keyword

    def call(self, x: torch.Tensor):
        return self.model(**{self.keyword: x}) if self.keyword else self.model(x)

    def forward(self, x: torch.Tensor):
        return _tensors(self.call(x))


def _tensors(out) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    values = out.values() if hasattr(out, "values") else out
    return tuple(v for v in values if isinstance(v, torch.Tensor))


def _output_names(wrapped: nn.Module, inputs: tuple) -> list[str]:
    with torch.no_grad():
        out = wrapped.call(*inputs)
    if isinstance(out, torch.Tensor):
        return ["output"]
    if hasattr(out, "items"):
        return [k for k, v in out.items() if isinstance(v, torch.Tensor)]
    return [f"output_{i}" for i, v in enumerate(out) if isinstance(v, torch.Tensor)]


def _is_text(model: nn.Module, example) -> bool:
    return isinstance(example, dict) and "input_ids" in example


def text_example(model: nn.Module, batch: int, tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids of the model's vocabulary with an attention mask whose last row is half padding."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch, tokens), generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.int64)
    if batch > 1:
        mask[-1, tokens // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _example_inputs(model: nn.Module, example, batch: int, seed: int, tokens: int | None = None) -> tuple:
    """Example inputs of `batch` rows: the example's shape (or the family's) with random values."""
    if _is_text(model, example):
        inputs = text_example(model, batch, tokens or TEXT_TOKENS, seed)
        return inputs["input_ids"], inputs["attention_mask"]
    if isinstance(example, dict):
        example = next(iter(example.values()))
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, *example.shape[1:], generator=g, dtype=example.dtype),)


def max_relative_error(got, want) -> float:
    """max |got - want| / max |want| over all outputs."""
    if len(got) != len(want):
        raise VbpError(f"onnxruntime gave {len(got)} outputs where PyTorch gives {len(want)}")
    worst = 0.0
    for g, w in zip(got, want):
        g, w = torch.as_tensor(g).double(), w.detach().double()
        worst = max(worst, float((g - w).abs().max() / w.abs().max().clamp_min(1e-30)))
    return worst


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example=None,
    opset: int = OPSET,
    check_batch: int = 3,
    tolerance: float = TOLERANCE,
) -> dict:
    """Write `model` (eval mode, fp32, CPU) to the ONNX file `path` by torch.onnx's dynamo exporter, with a
    dynamic batch axis (and a dynamic sequence axis for an HF text model, whose inputs are input_ids and
    attention_mask), then run the file in onnxruntime (CPU) on fresh random input of `check_batch` rows (the
    exported example has 2; text also at another length) against PyTorch. Raises VbpError, writing nothing,
    when the max relative error (max |ort - torch| / max |torch|, over all outputs) is above `tolerance`.

    example: an image batch tensor (its shape, not its batch size, is used), {"pixel_values": ...} or
    {"input_ids": ...}; default the family's example input. Returns {"path", "opset", "inputs", "outputs",
    "export_batch", "check_batch", "max_rel_error"}.
    """
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise VbpError("ONNX export needs onnx, onnxscript and onnxruntime: pip install -r requirements.txt") from exc
    if check_batch == 2 or check_batch < 1:
        raise VbpError(f"check_batch must be a batch size other than the exported one (2), got {check_batch}")
    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not 7 <= opset <= latest:
        raise VbpError(f"the ONNX opset must be a whole number from 7 to {latest} (this onnx's newest), got {opset!r}")
    model = eager_copy(model).eval()
    param = next(model.parameters())
    if param.dtype != torch.float32 or param.device.type != "cpu":
        model = copy.deepcopy(model).float().cpu()
    example = example if example is not None else example_input(model)
    text = _is_text(model, example)
    if text:
        wrapped, names = _TextOutputs(model), ["input_ids", "attention_mask"]
    else:
        keyword = next(iter(example)) if isinstance(example, dict) else None
        wrapped, names = _ImageOutputs(model, keyword), [keyword or "input"]
    export_batch = 2
    inputs = _example_inputs(model, example, export_batch, seed=0)
    outputs = _output_names(wrapped, inputs)
    batch, sequence = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=2, max=8192)
    shapes = tuple({0: batch, 1: sequence} if text else {0: batch} for _ in names)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        try:
            # the exporter logs its version conversion (a failed one as a traceback): the outcome is checked below
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), _logging_off():
                torch.onnx.export(
                    wrapped, inputs, str(tmp), input_names=names, output_names=outputs, dynamic_shapes=shapes,
                    opset_version=opset, dynamo=True, external_data=False, verbose=False,
                )
        except Exception as exc:  # the exporter raises many kinds; say what in one line
            message = " ".join(str(exc).split())[:400]
            raise VbpError(f"torch.onnx.export failed for {type(model).__name__}: {message}") from exc
        fresh = _example_inputs(model, example, check_batch, seed=1, tokens=TEXT_TOKENS + 7 if text else None)
        try:
            proto = onnx.load(str(tmp))
            onnx.checker.check_model(proto)
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
            got = session.run(None, {n: v.numpy() for n, v in zip(names, fresh)})
        except Exception as exc:  # onnx and onnxruntime raise their own kinds; say what in one line
            message = " ".join(str(exc).split())[:400]
            raise VbpError(f"the exported ONNX file of {type(model).__name__} does not check or run: {message}") from exc
        recorded = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=opset)
        if recorded != opset:  # the exporter writes its own opset and converts; where that fails it keeps its own
            raise VbpError(
                f"torch.onnx could not convert {type(model).__name__} to opset {opset} (an operator of it has no "
                f"version that old) and would have written opset {recorded}; the file was not written: give an opset of "
                f"{recorded} or later (--opset, opset=)"
            )
        with torch.no_grad():
            want = wrapped(*fresh)
        error = max_relative_error(got, want)
        if not error <= tolerance:
            raise VbpError(
                f"onnxruntime's outputs differ from PyTorch's by a max relative error of {error:.2e} (above "
                f"{tolerance:.0e}) at batch {check_batch}; the file was not written"
            )
    return {"path": str(path), "opset": recorded, "inputs": names, "outputs": outputs, "export_batch": export_batch,
            "check_batch": check_batch, "max_rel_error": error}


# ---------------------------------------------------------------------------------------- Hugging Face folder


def hf_model(model: nn.Module):
    from ..families import hf

    if not hf.owns(model):
        raise VbpError(
            f"only Hugging Face models export as a model folder, not a {type(model).__name__}: export it with "
            "--onnx, or reload it with vbp.load_pruned (timm and torchvision constructors build every MLP at one "
            "width from their own arguments)"
        )
    if any(isinstance(m, CompactMlp) for m in model.modules()):
        raise VbpError("a vbp.compact model has no Hugging Face layout: export the pruned model before compacting it")
    return model


def source_folder(model: nn.Module) -> Path | None:
    """The local folder an HF model was loaded from (its config's _name_or_path), when it still exists."""
    name = getattr(model.config, "_name_or_path", "") or ""
    return Path(name) if name and Path(name).is_dir() else None


def uniform_width(model: nn.Module, pad_to_uniform: bool = False) -> int:
    """The one MLP width of every site; unequal widths are refused unless pad_to_uniform (then the widest)."""
    widths = {s.name: s.width for s in find_sites(model)}
    if not widths:
        raise VbpError("the model has no MLP sites to export")
    if len(set(widths.values())) > 1 and not pad_to_uniform:
        raise VbpError(
            f"the MLP sites keep different widths ({min(widths.values())} to {max(widths.values())}), but an HF "
            "config holds one intermediate_size: prune with --scope uniform (select(scope='uniform')), or export "
            "with --pad-to-uniform (zero-pads every site to the widest: exact outputs, but the padding costs speed)"
        )
    width, full = max(widths.values()), getattr(getattr(model, "config", None), "intermediate_size", None)
    if len(set(widths.values())) > 1 and isinstance(full, int) and width >= full:
        kept = sum(widths.values()) / (len(widths) * full)
        raise VbpError(
            f"--pad-to-uniform pads every MLP to the widest kept width, {width}, and that is the unpruned width: the "
            f"export would be as large and slow as the unpruned model (its MLPs keep {kept:.0%} of their neurons, "
            "zero-padded back to 100%); prune with --scope uniform to export a smaller model"
        )
    return width


def padded_fraction(model: nn.Module, width: int) -> tuple[float, float] | None:
    """(the exported MLPs' size at one `width`, the pruned MLPs' size), as fractions of the unpruned MLPs' (the
    config's intermediate_size); None where the config holds none."""
    full = getattr(getattr(model, "config", None), "intermediate_size", None)
    widths = [s.width for s in find_sites(model)]
    return (width / full, sum(widths) / (len(widths) * full)) if isinstance(full, int) and full > 0 else None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def check_source(model: nn.Module, source: Path | None) -> None:
    """Refuse a source folder whose files belong to another model: a config.json of another model type or
    vocabulary size, or (for a text model) a tokenizer with ids past the embedding table or far fewer tokens
    than it has rows. The export would ship another model's tokenizer beside this one's embeddings. Tokenizer
    files that transformers cannot read are left to the copy."""
    if source is None or not source.is_dir():
        return
    import json

    mine = model.config
    try:
        theirs = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        theirs = None
    if isinstance(theirs, dict):
        differ = [f"{k} {theirs.get(k)!r}, not {getattr(mine, k, None)!r}" for k in ("model_type", "vocab_size")
                  if k in theirs and theirs.get(k) != getattr(mine, k, None)]
        if differ:
            raise VbpError(
                f"the source folder {source} holds another model ({'; '.join(differ)}): its tokenizer and processor "
                "files do not fit this one; give the folder the model was pruned from (--source)"
            )
    if "input_ids" not in example_input(model) or not any((source / f).is_file() for f in _TOKENIZER_FILES):
        return
    from transformers import AutoTokenizer

    from ..families.hf import check_tokenizer
    from .text import check_tokenizer_complete

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception:  # files transformers cannot read (each raises its own kind): copied, not judged
        return
    check_tokenizer(model, tokenizer, source)
    check_tokenizer_complete(model, tokenizer, source)


@torch.no_grad()
def pad_sites(model: nn.Module, width: int) -> nn.Module:
    """Zero-pad every MLP site of `model` (in place) to `width` neurons: the new neurons' producer rows and biases
    and consumer columns are zero, so each contributes exactly nothing whatever its activation gives at 0."""
    for site in find_sites(model):
        extra = width - site.width
        if extra <= 0:
            continue
        producers = []
        for w, b in site.producer_weights():
            producers.append((torch.cat([w, w.new_zeros(extra, w.shape[1])]), None if b is None else torch.cat([b, b.new_zeros(extra)])))
        w2, b2 = site.consumer_weights()
        site.narrow(producers, (torch.cat([w2, w2.new_zeros(w2.shape[0], extra)], 1), b2))
    return model


@torch.no_grad()
def _fit_config(model: nn.Module, width: int):
    """(model, config): the config with intermediate_size=width whose class builds exactly the model's tensors.

    A consumer with a bias where the class has none (the folded means of a gated LLaMA-style MLP) needs the
    config's `mlp_bias`; the producers then get zero biases."""
    config = copy.deepcopy(model.config)
    if not hasattr(config, "intermediate_size"):
        raise VbpError(
            f"{type(config).__name__} holds no intermediate_size, so a standard folder cannot describe the pruned "
            "MLPs: reload the model with vbp.load_pruned, or export it with --onnx"
        )
    config.intermediate_size = width

    def mismatch(config):
        state = model.state_dict()
        with torch.device("meta"):
            skeleton = type(model)(config).state_dict()
        missing = [k for k in skeleton if k not in state]
        extra = [k for k in state if k not in skeleton]
        shapes = [k for k in state if k in skeleton and skeleton[k].shape != state[k].shape]
        return missing, extra, shapes

    missing, extra, shapes = mismatch(config)
    if extra and hasattr(config, "mlp_bias") and not config.mlp_bias:
        config.mlp_bias = True
        missing, extra, shapes = mismatch(config)
        if not extra and not shapes and missing:
            model = copy.deepcopy(model)
            for key in missing:  # the producers' biases mlp_bias adds: zero
                layer = model.get_submodule(key.rsplit(".", 1)[0]) if key.endswith(".bias") else None
                if not isinstance(layer, nn.Linear) or layer.bias is not None:
                    break
                layer.bias = nn.Parameter(layer.weight.new_zeros(layer.out_features))
            missing, extra, shapes = mismatch(config)
    if missing or extra or shapes:
        first = (missing or extra or shapes)[:3]
        raise VbpError(
            f"{type(model).__name__} built from a config with intermediate_size={width} does not hold the pruned "
            f"model's tensors (first differing: {first}): reload it with vbp.load_pruned, or export it with --onnx"
        )
    return model, config


def _copy_source_files(source: Path, out: Path) -> list[str]:
    """Copy the source folder's non-weight files (tokenizer, processor, sentence-transformers configs) and the
    module folders its modules.json names; never its weights, its config.json or its model card."""
    copied = []
    for item in sorted(source.iterdir()):
        if item.is_file() and item.name not in _NOT_COPIED and not item.name.endswith(_WEIGHT_SUFFIXES):
            if not (out / item.name).exists():
                shutil.copy2(item, out / item.name)
                copied.append(item.name)
    modules = source / "modules.json"
    if modules.is_file():
        import json

        try:
            entries = json.loads(modules.read_text())
            paths = [e.get("path", "") for e in entries]
        except (ValueError, AttributeError, TypeError) as exc:
            raise VbpError(f"{modules} is not a readable sentence-transformers modules.json ({exc})") from exc
        for sub in paths:
            folder = source / sub
            if sub and folder.is_dir() and folder.resolve().is_relative_to(source.resolve()):
                shutil.copytree(folder, out / sub, dirs_exist_ok=True)
                copied.append(sub + "/")
    return copied


HF_COMMAND = "export --hf"  # the owner an exported folder's manifest records (`vbp.output_folder`)


def check_hf_paths(out: Path, source: Path | None, overwrite: bool, model_id: str | None = None) -> None:
    """Refuse an output folder that is, or lies inside, the source folder, or that holds files another command (or
    an export of another model: `model_id`, see `vbp.output_folder.model_id_of`) wrote, unless `overwrite`."""
    target = out.resolve()
    if source is not None:
        src = source.resolve()
        if target == src or target.is_relative_to(src) or src.is_relative_to(target):
            raise VbpError(
                f"the output folder {out} and the source model folder {source} overlap; writing there would change "
                "the model it came from: choose a folder outside it"
            )
    check_folder(out, HF_COMMAND, model_id, overwrite, option="--hf")


def _hf_outputs(model: nn.Module, inputs: dict) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**inputs)
    return [v for v in out.values() if isinstance(v, torch.Tensor)]


def export_hf(
    model: nn.Module,
    out_dir: str | os.PathLike,
    source: str | os.PathLike | None = None,
    pad_to_uniform: bool = False,
    overwrite: bool = False,
    tolerance: float = TOLERANCE,
) -> dict:
    """Write a pruned HF model whose MLP sites all keep one width as a standard Hugging Face folder.

    source: the folder the unpruned model came from (default: the one its config names), whose tokenizer,
    processor and sentence-transformers files are copied. The folder is reloaded by its class's
    from_pretrained and compared with `model` on random input before it is renamed into place.
    Returns {"path", "intermediate_size", "padded_sites", "copied", "sentence_transformers", "max_rel_error"}.
    """
    hf_model(model)
    _transformers_quiet()
    out = Path(out_dir)
    source = Path(source) if source is not None else source_folder(model)
    if source is not None and not source.is_dir():
        raise VbpError(f"the source folder {source} does not exist")
    model_id = model_id_of(model)
    check_hf_paths(out, source, overwrite, model_id)
    check_source(model, source)
    width = uniform_width(model, pad_to_uniform)
    padded = [s.name for s in find_sites(model) if s.width != width]
    work = pad_sites(copy.deepcopy(model), width) if padded else model
    work, config = _fit_config(work.eval(), width)
    if hasattr(config, "architectures"):
        config.architectures = [type(work).__name__]
    example = _text_or_image(work)
    with staged_folder(out, HF_COMMAND, model_id) as tmp:
        saved_config = work.config
        work.config = config
        try:
            work.save_pretrained(tmp, safe_serialization=True)
        finally:
            work.config = saved_config
        copied = _copy_source_files(source, tmp) if source is not None else []
        reloaded = type(model).from_pretrained(tmp).eval()
        error = max_relative_error(_hf_outputs(reloaded, example), _hf_outputs(model.eval(), example))
        if not error <= tolerance:
            raise VbpError(f"the written folder reloads to outputs off by {error:.2e} (above {tolerance:.0e})")
    if source is None:
        warnings.warn("no source folder known: no tokenizer or processor files were copied", stacklevel=2)
    return {"path": str(out), "intermediate_size": width, "padded_sites": padded, "copied": copied,
            "sentence_transformers": "modules.json" in copied, "max_rel_error": error}


def _transformers_quiet() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()


def _text_or_image(model: nn.Module) -> dict:
    example = example_input(model)
    if "input_ids" in example:
        return text_example(model, 2, TEXT_TOKENS, seed=2)
    return {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(2)) for k, v in example.items()}
