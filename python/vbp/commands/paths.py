"""Every command's input and output paths, the one check that no output overwrites or lands inside an input, and
the check that an existing single-file output is of the kind the command writes.

Inputs are what the user already has: the `hf:` folder a model is loaded from, weights (`--checkpoint`),
data files and folders, statistics, pruned models, a teacher's folder. Outputs are every file a command writes.
Output folders are `vbp.output_folder`'s: owned by one command and model, replaced whole.
"""

import errno
import json
import os
from pathlib import Path

from ..errors import VbpError

PRUNE_FILES = ("model.safetensors", "plan.json", "stats.safetensors")
FINETUNE_FILES = ("model.safetensors", "checkpoint.pt", "log.json", "log.csv", "teacher_text.jsonl")
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
DEMO_FILES = ("model.safetensors", "plan.json", "minilm_table.md", "llm_table.md")
BUILTIN_DATA = ("digits", "synthetic")


def _model_folder(model_id: str | None) -> str | None:
    """The local folder an `hf:` id loads from, or the file a `gguf:` id names (None for other ids and hub ids)."""
    if model_id and model_id.startswith("hf:") and Path(model_id[3:]).is_dir():
        return model_id[3:]
    if model_id and model_id.startswith("gguf:") and Path(model_id[5:]).exists():
        return model_id[5:]
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


def replaced_folders(command: str, args) -> dict[Path, str]:
    """Folder -> option of every output folder `command` replaces whole with these arguments (`vbp.output_folder`):
    prune's --output, export's --hf, and finetune's --output when --overwrite starts it over."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    folder = {"prune": "output", "export": "hf", "finetune": "output" if get("overwrite") else None}.get(command)
    return {Path(get(folder)): f"--{folder}"} if folder and get(folder) else {}


def carried_inputs(command: str, args) -> set[str]:
    """The options whose input file lies in a replaced output folder and is carried into the new one: prune's
    --stats OUT/stats.safetensors (statistics an earlier prune of the folder's model gathered) stays beside the
    model pruned from them."""
    if command == "prune" and args.output and args.stats:
        if Path(args.stats).resolve() == (Path(args.output) / "stats.safetensors").resolve():
            return {"--stats"}
    return set()


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
        if get("output") and Path(args.latency_table).resolve().is_relative_to(Path(args.output).resolve()):
            raise VbpError(f"--latency-table {args.latency_table} lies inside --output {args.output}, which is replaced "
                           "whole: write it elsewhere")
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
    writing it would destroy what the user has. Paths are compared resolved (links, `..`, relative paths); a
    symbolic link that leads back to itself is refused, naming it."""
    try:
        _check_outputs_spare_inputs(command, args)
    except (RuntimeError, OSError) as exc:  # Path.resolve in a link loop: RuntimeError before Python 3.13, then OSError
        loop = getattr(exc, "filename", None) or str(exc).removeprefix("Symlink loop from ").strip("'")
        if getattr(exc, "errno", None) != errno.ELOOP and not str(exc).startswith("Symlink loop from "):
            raise
        raise VbpError(f"{_first_loop(loop)} is a symbolic link that leads back to itself: give a real file or folder") from exc


def _first_loop(path: str) -> Path:
    """The first component of `path`, from the top, that is a symbolic link loop (`path` when none is found)."""
    for candidate in reversed([Path(path), *Path(path).parents]):
        try:
            os.stat(candidate)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return candidate
    return Path(path)


def _check_outputs_spare_inputs(command: str, args) -> None:
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
    carried = carried_inputs(command, args)
    for output, out_option in replaced_folders(command, args).items():
        for option, source in inputs.items():
            if source.is_relative_to(output.resolve()) and option not in carried:
                raise VbpError(
                    f"the input {source} ({option}) lies inside the output folder {output} ({out_option}), which is "
                    "replaced whole: choose an output folder that holds none of your inputs"
                )


# What an existing single-file output must hold to be replaced without --overwrite: the kind the option writes.
FILE_KINDS = {"--stats": "vbp statistics", "--stats (its .partial)": "vbp statistics", "--onnx": "an ONNX model",
              "--summary": "a vbp summary"}
SUMMARY_KEYS = ("ratio_removed", "top1", "cosine")  # one of them is in every summary prune and eval write
COMMAND_FILE_KINDS = {("profile", "--output"): "a vbp latency table"}  # options whose name other commands use too


def check_output_kinds(command: str, args) -> None:
    """Refuse, before any work, an existing --stats, --onnx or --summary file that holds something else than what
    the option writes (a pruned model, data, a plan, a file of another program): writing would destroy it.
    --overwrite replaces it anyway."""
    if getattr(args, "overwrite", False):
        return
    for path, option in command_outputs(command, args).items():
        kind = COMMAND_FILE_KINDS.get((command, option), FILE_KINDS.get(option))
        if kind and path.is_file() and not _holds(path, kind):
            raise VbpError(
                f"{option.split()[0]} {path} already exists and is not {kind}; writing would destroy it: give "
                "another path, or --overwrite to replace it"
            )
        if command == "calibrate" and option == "--stats" and path.is_file():  # statistics replace only their own
            _check_same_model(path, _stats_model(path), args.model)


def _stats_model(path: Path) -> str:
    """The model a vbp statistics file was gathered on ("" when it does not say)."""
    model = _vbp_meta(path).get("model", "")
    return model if isinstance(model, str) else ""


def _check_same_model(path: Path, recorded: str, model: str) -> None:
    """Refuse to replace statistics gathered on another model than `model` (those took their own calibration)."""
    from ..model_ids import same_model

    if recorded and not same_model(recorded, model):
        raise VbpError(
            f"--stats {path} holds the statistics of {recorded}, not {model}; writing would destroy them: give another "
            "path, or --overwrite to replace them"
        )


def _holds(path: Path, kind: str) -> bool:
    if kind == "vbp statistics":
        return _vbp_format(path).startswith("vbp-stats/")
    if kind == "an ONNX model":
        return _is_onnx(path)
    doc = _json_document(path)
    if kind == "a vbp latency table":
        return str(doc.get("format", "")).startswith("vbp-latency/")
    return "format" not in doc and any(k in doc for k in SUMMARY_KEYS)


def _json_document(path: Path) -> dict:
    """The JSON object in `path` ({} for anything else)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _vbp_format(path: Path) -> str:
    """The format tag of a vbp safetensors file ("vbp-stats/2", "vbp-model/2"); "" for any other file."""
    tag = _vbp_meta(path).get("format", "")
    return tag if isinstance(tag, str) else ""


def _vbp_meta(path: Path) -> dict:
    """The JSON metadata of a vbp safetensors file ({} for any other file)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("vbp", "{}"))
    except (SafetensorError, OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _is_onnx(path: Path) -> bool:
    """Whether `path` parses as an ONNX model with a graph (its external data, if any, not read)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx missing, or protobuf's and onnx's own errors for a file that is no model
        return False
    return proto.ir_version > 0 and len(proto.graph.node) > 0


def written_hint(args) -> str:
    """What a command interrupted by Ctrl-C has written: the outputs it appended to args.written as each landed
    (a folder swapped in, a file renamed into place); every other output is as it was."""
    written = getattr(args, "written", [])
    if not written:
        return "nothing was written"
    return f"wrote {' and '.join(map(str, written))} before the interrupt; nothing else was written"
