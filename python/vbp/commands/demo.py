"""vbp demo: the main job on the embedded defaults (the digits ViT, then all-MiniLM-L6-v2 on text); --llm: SmolLM2."""

from pathlib import Path

from ..errors import VbpError

NAME = "demo"
HELP = "prune the embedded digits ViT and a real text encoder; report accuracy, MACs, latency and similarity"


def add_arguments(p) -> None:
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--output", default="out/demo", help="folder for the pruned model and the text table")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-text", action="store_true", help="skip the second part (all-MiniLM-L6-v2 on text)")
    p.add_argument(
        "--llm",
        action="store_true",
        help="only the LLM part: SmolLM2-135M-Instruct pruned at 20/30/50%%, perplexity and greedy generations "
        "(docs/llm.md; a few minutes on 2 cores)",
    )


def run(args) -> None:
    from ..workflows.demo import run_demo
    from ..workflows.text_demo import run_text_demo
    from .options import check_device
    from .paths import check_outputs_spare_inputs

    check_device(args.device)
    check_outputs_spare_inputs(NAME, args)
    _check_output_folder(Path(args.output))
    if args.llm:
        from ..workflows.llm_demo import run_llm_demo

        if args.no_text or args.ratio != 0.5:
            raise VbpError("--llm runs the LLM part alone, at its own rates: leave out --no-text and --ratio")
        run_llm_demo(output=Path(args.output))
        _claim(Path(args.output))
        return
    run_demo(ratio=args.ratio, output=Path(args.output), device=args.device)
    if not args.no_text:
        run_text_demo(output=Path(args.output))
    _claim(Path(args.output))


def _check_output_folder(out: Path) -> None:
    """The demo writes its files into --output one by one: a folder another command (prune, finetune, ...) or a
    program wrote is refused before any work, whose model or plan it would replace. A demo's folder is accepted,
    also one an earlier vbp wrote without a manifest (demo files only, a table among them)."""
    from ..output_folder import folder_files, read_manifest
    from .paths import DEMO_FILES

    names = folder_files(out) if out.is_dir() else []
    if not names:
        return
    manifest = read_manifest(out)
    if manifest is not None and manifest["command"] == NAME:
        return
    tables = {"minilm_table.md", "llm_table.md"}
    if manifest is None and set(names) <= {*DEMO_FILES, *tables} and tables & set(names):
        return
    held = f"the output of vbp {manifest['command']} ({manifest['model']})" if manifest else (
        f"files vbp demo did not write ({', '.join(names[:3])}{' and more' if len(names) > 3 else ''})")
    raise VbpError(f"--output {out} holds {held}, which the demo's model.safetensors and plan.json would replace or "
                   "join: give another --output")


def _claim(out: Path) -> None:
    """Record the demo as the owner of its folder (`vbp.output_folder`), so other commands refuse it."""
    from ..output_folder import claim_folder

    claim_folder(out, NAME, "embedded models")
