"""vbp demo: the main job on the embedded defaults (the digits ViT, then all-MiniLM-L6-v2 on text)."""

from pathlib import Path

NAME = "demo"
HELP = "prune the embedded digits ViT and a real text encoder; report accuracy, MACs, latency and similarity"


def add_arguments(p) -> None:
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--output", default="out/demo", help="folder for the pruned model and the text table")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-text", action="store_true", help="skip the second part (all-MiniLM-L6-v2 on text)")


def run(args) -> None:
    from ..workflows.demo import run_demo
    from ..workflows.text_demo import run_text_demo
    from .options import check_device
    from .paths import check_outputs_spare_inputs

    check_device(args.device)
    check_outputs_spare_inputs(NAME, args)
    run_demo(ratio=args.ratio, output=Path(args.output), device=args.device)
    if not args.no_text:
        run_text_demo(output=Path(args.output))
