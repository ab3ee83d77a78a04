"""vbp export: a pruned model as an ONNX file (checked in onnxruntime) and/or, for a Hugging Face model with one
MLP width everywhere, a standard model folder that transformers (and sentence-transformers) load without vbp."""

from pathlib import Path

from ..checkpoint import load_pruned
from ..errors import VbpError
from ..files import check_writable
from ..output_folder import model_id_of
from ..workflows.export import (
    OPSET,
    TOLERANCE,
    check_hf_paths,
    check_source,
    export_hf,
    export_onnx,
    hf_model,
    padded_fraction,
    source_folder,
    uniform_width,
)
from .paths import check_output_kinds, check_outputs_spare_inputs, written_hint

NAME = "export"
HELP = "write a pruned model as ONNX (checked in onnxruntime) or as a Hugging Face folder that loads without vbp"


def add_arguments(p) -> None:
    p.add_argument("--pruned", required=True, help="a model written by `vbp prune --output` (model.safetensors)")
    p.add_argument(
        "--model",
        metavar="py:MODULE:FUNCTION",
        help="the Python builder --pruned was pruned from, if it was: vbp runs no code a file names",
    )
    p.add_argument("--onnx", metavar="FILE", help="write an ONNX file here (dynamic batch, and sequence for text)")
    p.add_argument(
        "--hf",
        metavar="DIR",
        help="write a Hugging Face folder here (config.json, model.safetensors, the source's tokenizer files; "
        "a sentence-transformers source keeps its layout); needs one MLP width: prune with --scope uniform",
    )
    p.add_argument(
        "--source",
        metavar="DIR",
        help="the folder the unpruned HF model came from, whose tokenizer and processor files --hf copies "
        "(default: the folder recorded in the pruned file)",
    )
    p.add_argument(
        "--pad-to-uniform",
        action="store_true",
        help="--hf of a model with unequal MLP widths: zero-pad every MLP to the widest (exact outputs, but the "
        "padded neurons cost speed)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --hf folder that holds files other than an export of this model, or an --onnx file that "
        "is not an ONNX model",
    )
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset")
    p.add_argument(
        "--check-batch",
        type=int,
        default=3,
        metavar="N",
        help="the batch size onnxruntime is checked against PyTorch at (the file is exported at 2)",
    )


def run(args) -> None:
    if not args.onnx and not args.hf:
        raise VbpError("give --onnx FILE, --hf DIR, or both")
    hf_only = [o for o, v in (("--source", args.source), ("--pad-to-uniform", args.pad_to_uniform)) if v]
    if hf_only and not args.hf:
        raise VbpError(f"{' and '.join(hf_only)} shape the --hf folder, and only --onnx is written: leave them out")
    if args.check_batch < 1 or args.check_batch == 2:
        raise VbpError(f"--check-batch must be a positive batch size other than 2 (the exported one), got {args.check_batch}")
    check_outputs_spare_inputs(NAME, args)  # the --hf folder, replaced whole, holds no input either
    check_output_kinds(NAME, args)
    if args.onnx:
        check_writable(args.onnx)
    args.written = []  # for the message after Ctrl-C
    model = load_pruned(args.pruned, model=args.model)
    if args.hf:  # everything --hf needs is checked before the (slower) ONNX export
        hf_model(model)
        uniform_width(model, args.pad_to_uniform)
        source = Path(args.source) if args.source else source_folder(model)
        check_hf_paths(Path(args.hf), source, args.overwrite, model_id_of(model))
        check_source(model, source)
    if args.onnx:
        result = export_onnx(model, args.onnx, opset=args.opset, check_batch=args.check_batch)
        args.written.append(args.onnx)
        print(
            f"wrote {args.onnx} (opset {result['opset']}; inputs {', '.join(result['inputs'])}, dynamic batch"
            f"{' and sequence' if 'input_ids' in result['inputs'] else ''}); onnxruntime vs PyTorch at batch "
            f"{result['check_batch']}: max relative error {result['max_rel_error']:.2e} (limit {TOLERANCE:.0e})"
        )
    if args.hf:
        result = export_hf(model, args.hf, source=args.source, pad_to_uniform=args.pad_to_uniform, overwrite=args.overwrite)
        padded = ""
        if result["padded_sites"]:
            n = len(result["padded_sites"])
            padded = f"; {n} MLP{'s' * (n != 1)} zero-padded"
            sizes = padded_fraction(model, result["intermediate_size"])
            if sizes is not None:
                padded += f" to {sizes[0]:.0%} of the unpruned MLPs' size (the pruned model's: {sizes[1]:.0%})"
        layout = "sentence-transformers" if result["sentence_transformers"] else "Hugging Face"
        print(
            f"wrote {str(args.hf).rstrip('/')}/ ({layout} layout, intermediate_size {result['intermediate_size']}{padded}); reloaded "
            f"by from_pretrained: max relative error {result['max_rel_error']:.2e}"
        )


def interrupted_hint(args) -> str:
    return written_hint(args)
