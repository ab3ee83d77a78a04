"""Every command's input and output paths, and the one check that no output overwrites or lands inside an input.

Inputs are what the user already has: the `hf:` folder a model is loaded from, weights (`--checkpoint`),
data files and folders, statistics, pruned models, a teacher's folder. Outputs are every file a command writes.
"""

from pathlib import Path

from ..errors import VbpError

PRUNE_FILES = ("model.safetensors", "plan.json", "stats.safetensors")
FINETUNE_FILES = ("model.safetensors", "checkpoint.pt", "log.json", "log.csv")
SWEEP_FILES = (
    "table.csv",
    "table.md",
    "sweep.json",
    "fig4_learning_curves.png",
    "fig5_retention.png",
    "fig6_layers.png",
    "fig7_pruned_activations.png",
    "fig8_retained_activations.png",
)
DEMO_FILES = ("model.safetensors", "plan.json", "minilm_table.md")
BUILTIN_DATA = ("digits", "synthetic")
WHOLE_FOLDER_OUTPUTS = ("--hf",)  # output folders a command replaces as a whole


def _model_folder(model_id: str | None) -> str | None:
    """The local folder an `hf:` id loads from (None for other ids and hub ids)."""
    if model_id and model_id.startswith("hf:") and Path(model_id[3:]).is_dir():
        return model_id[3:]
    return None


def command_inputs(command: str, args) -> dict[str, str]:
    """Option -> path of every file or folder `command` reads that the user made."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    inputs = {
        "--model": _model_folder(get("model")),
        "--teacher": _model_folder(get("teacher")),
        "--checkpoint": get("checkpoint"),
        "--data": None if get("data") in BUILTIN_DATA else get("data"),
        "--val-data": get("val_data"),
        "--pruned": get("pruned"),
        "--source": get("source"),
        "--stats": None if command == "calibrate" else get("stats"),
        "--latency-table": get("latency_table") if get("latency_table") and Path(get("latency_table")).exists() else None,
    }
    return {option: path for option, path in inputs.items() if path}


def command_outputs(command: str, args) -> dict[Path, str]:
    """Path -> option of every file `command` writes with these arguments."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    outputs: dict[Path, str] = {}
    if command == "calibrate":
        outputs = {Path(args.stats): "--stats", Path(f"{args.stats}.partial"): "--stats (its .partial)"}
    if command == "profile":
        outputs = {Path(args.output): "--output"}
    if command == "export":  # --hf: a folder, replaced whole
        outputs = {Path(v): f"--{k}" for k, v in (("onnx", get("onnx")), ("hf", get("hf"))) if v}
        if get("onnx") and get("hf") and Path(args.onnx).resolve().is_relative_to(Path(args.hf).resolve()):
            raise VbpError(f"--onnx {args.onnx} lies inside --hf {args.hf}, which is replaced whole: write it elsewhere")
    if command == "prune" and get("latency_table") and not Path(args.latency_table).exists():
        _add_output(outputs, Path(args.latency_table), "--latency-table")  # written when prune measures it
    folder_files = {"prune": PRUNE_FILES, "finetune": FINETUNE_FILES, "sweep": SWEEP_FILES, "demo": DEMO_FILES}
    if get("output") and command in folder_files:
        for name in folder_files[command]:
            if not (command == "prune" and name == "stats.safetensors" and get("stats")):  # written when it calibrated
                _add_output(outputs, Path(args.output) / name, "--output")
    if get("summary"):
        _add_output(outputs, Path(args.summary), "--summary")
    return outputs


def _add_output(outputs: dict[Path, str], path: Path, option: str) -> None:
    """outputs[path] = option, refusing a path another option already writes: one would overwrite the other."""
    for other, other_option in outputs.items():
        if other.resolve() == path.resolve():
            raise VbpError(
                f"{path} ({option}) is also written as {other} ({other_option}); one would overwrite the other: "
                f"give {option} another path"
            )
    outputs[path] = option


def check_outputs_spare_inputs(command: str, args) -> None:
    """Refuse, before any work, an output that is one of the run's inputs or lies inside an input folder:
    writing it would destroy what the user has. Paths are compared resolved (links, `..`, relative paths)."""
    inputs = {option: Path(path).resolve() for option, path in command_inputs(command, args).items()}
    for output, out_option in command_outputs(command, args).items():
        target = output.resolve()
        for option, source in inputs.items():
            if target == source:
                raise VbpError(
                    f"the output {output} ({out_option}) is the same file as the input {source} ({option}); writing "
                    "it would destroy the input: choose another output path"
                )
            if target.is_relative_to(source):
                raise VbpError(
                    f"the output {output} ({out_option}) lies inside the input folder {source} ({option}); writing "
                    "there would change your input: choose an output path outside it"
                )
            if out_option in WHOLE_FOLDER_OUTPUTS and source.is_relative_to(target):
                raise VbpError(
                    f"the input {source} ({option}) lies inside the output folder {output} ({out_option}), which is "
                    "replaced whole: choose an output folder that holds none of your inputs"
                )
