"""The argparse declarations of the arguments several commands share; `options.py` checks them and turns their
values into models, data and statistics."""

import argparse

import torch

from ..compensation import COMPENSATIONS
from ..covariance import DEFAULT_RIDGE
from ..criteria import CRITERIA
from ..families.embedded import MODEL_NAME
from ..latency.profile import RUNTIMES
from ..recorder import BACKENDS
from ..select import SCOPES


def add_model_args(p: argparse.ArgumentParser, input_size: bool = True, reads_data: bool = True) -> None:
    """--model and its weights, --sites, --input-size (with `input_size`; its default from --data when the command
    `reads_data`) and --device."""
    p.add_argument(
        "--model",
        default=MODEL_NAME,
        help="a timm name, hf:DIR_OR_ID (Hugging Face), gguf:FILE (a GGUF causal LM, dequantized once into "
        "~/.cache/vbp/gguf), tv:NAME (torchvision) or py:MODULE:FUNCTION (a builder of your own); the default is the "
        "embedded digits ViT",
    )
    p.add_argument(
        "--sites",
        action="append",
        metavar="SPEC",
        help="name the MLPs yourself, PARENTS:FC1->FC2 or PARENTS:GATE,UP->DOWN (repeatable), e.g. "
        "'encoder.layer.*:intermediate.dense->output.dense'; without it the model's family finds them",
    )
    p.add_argument("--pretrained", action="store_true", help="load the model's pretrained timm weights")
    p.add_argument(
        "--num-classes",
        type=int,
        help="build the model with this many classes (a checkpoint fine-tuned with its own head; timm and tv models)",
    )
    p.add_argument("--checkpoint", help="load weights from this file (safetensors or a torch state dict)")
    if input_size:
        p.add_argument(
            "--input-size",
            metavar="C,H,W",
            help="the input shape of a py: model (for MACs, synthetic data and the --sites check; default: that "
            "of the first input of --data)" if reads_data else "the input shape of a py: model (and of the --sites "
            "check); default: the shape its builder sets",
        )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="digits",
        help="an ImageFolder directory (or a flat folder of images), a .txt file of sentences (one per line, for "
        "text models), 'digits' (embedded) or 'synthetic' (random inputs)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-batches", type=int, help="use at most this many batches")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="statistics backend: fused Triton kernel, PyTorch hooks, or auto (Triton on CUDA)",
    )
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out images that cannot be read instead of stopping at the first one",
    )
    p.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="leave out (and count) batches whose activations hold NaN/Inf instead of stopping",
    )


def add_selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scope",
        choices=SCOPES,
        help="rank neurons across all layers, per layer, keep one width at every site (uniform: the layout "
        "`vbp export --hf` writes as a standard folder), or across all layers relative to the residual stream each "
        "MLP writes into (residual). Default: global, and residual for gated MLPs (LLaMA, Qwen, ...: docs/llm.md)",
    )
    p.add_argument(
        "--criterion",
        choices=CRITERIA.names(),
        help="neuron score (VBP's is variance). Default: variance, and weighted_variance for gated MLPs",
    )
    p.add_argument(
        "--compensation",
        choices=COMPENSATIONS.names(),
        help="what replaces pruned hidden values: their mean (VBP), their least-squares prediction from the kept ones "
        "(affine; calibrates with covariance), or nothing. Default: mean, and affine for gated MLPs",
    )
    p.add_argument("--no-compensation", action="store_true", help="the same as --compensation none")
    p.add_argument(
        "--ridge",
        type=float,
        help=f"affine compensation's ridge, relative to the kept neurons' mean variance (default {DEFAULT_RIDGE})",
    )
    p.add_argument("--min-keep", type=int, default=1, help="keep at least this many neurons per MLP")
    p.add_argument("--round-to", type=int, default=1, help="round every kept width to a multiple of this")


def add_sequential_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sequential",
        action="store_true",
        help="prune site by site, each compensated with statistics gathered again on --data with the model "
        "pruned so far (one more calibration pass per MLP)",
    )


def add_latency_args(p: argparse.ArgumentParser, table: bool = True) -> None:
    """--latency-batch and --runtime: the batch and runtime a latency table is measured for (`table`: the command
    also takes --latency-table, whose runtime is the default)."""
    p.add_argument(
        "--latency-batch",
        type=int,
        metavar="N",
        help="inputs per batch the latency is measured at (the model's example input repeated)",
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help=f"how the pruned model will run: as it is (eager) or after vbp.compact (compact); default "
        f"{RUNTIMES[0]}" + (", or that of --latency-table" if table else ""),
    )


def add_stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stats", help="statistics from `vbp calibrate` (default: calibrate on --data now)")
    p.add_argument(
        "--stats-anyway",
        action="store_true",
        help="use --stats even if they were gathered on other weights than the model's",
    )


def add_overwrite_arg(p: argparse.ArgumentParser, what: str) -> None:
    """--overwrite: replace `what` (an output another command or program wrote, refused without it)."""
    p.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_resume_args(p: argparse.ArgumentParser, resumes_from: str, result_options: str) -> None:
    """--resume (from `resumes_from`) and --resume-anyway (accept other `result_options` than the checkpoint's)."""
    p.add_argument("--resume", action="store_true", help=f"continue an interrupted run from {resumes_from}")
    p.add_argument(
        "--resume-anyway",
        action="store_true",
        help=f"with --resume: accept options ({result_options}, ...) that differ from the checkpoint's",
    )
