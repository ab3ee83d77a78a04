"""Output folders with one owner, replaced at once.

A folder vbp writes several files into (`prune --output`, `finetune --output`, `export --hf`) belongs to one kind
of command and one model. Its manifest, `.vbp-output.json`, says which:

    {"format": "vbp-output/1", "command": "prune", "model": "vbp_digits_vit", "files": ["model.safetensors", ...]}

`check_folder` refuses, before any work, a folder that is neither new (absent, or holding no file but a manifest)
nor written by the same command for the same model; `overwrite` lets a run replace it whole. A folder that is
replaced whole may also hold no file its manifest does not list (a file the user put there would be deleted).

`staged_folder` writes a folder whole: the files go to a sibling temporary folder, `.NAME.vbp-PID.XXXX.new`, which
is then swapped in by two renames (a folder cannot be swapped with another in one atomic step on Linux):

    1. the old folder, if any, is renamed aside, to `.NAME.vbp-PID.XXXX.old`;
    2. the new one is renamed to NAME;
    3. the old one is removed.

What an interrupt leaves at each step: before 1 (an error, or Ctrl-C while the files are written) the old folder
untouched and the new one removed; between 1 and 2 the old folder renamed back; after 2 the new folder, the old one
removed. Ctrl-C is handled on the way out (`finally`); after a kill, which runs no `finally`, the next run that
writes or checks the folder repairs it first (`repair`: a temporary of a process that is gone is removed, and an
old folder aside with no NAME beside it is renamed back). So NAME is always the old folder or the new one, never
a mix, and no temporary outlives the next run.

A folder filled file by file over a long run is not staged: `finetune` writes a checkpoint and its log after every
epoch, each file atomically, and `--resume` continues from them in place. Staged, the checkpoints of an interrupted
run would sit in a temporary folder that the next run removes, and `--resume` would find nothing. `claim_folder`
writes such a folder's manifest before its first file; starting it over (`--overwrite`) swaps in an empty folder
by `staged_folder`, so no file of the old run stays beside the new one.
"""

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from torch import nn

from .errors import VbpError
from .files import _alive, write_text_atomic
from .model_ids import comparable_id
from .models import model_source

MANIFEST = ".vbp-output.json"
FORMAT = "vbp-output/1"
_NEW, _OLD = ".new", ".old"  # suffixes of a folder being staged, and of the folder it replaces while it is swapped


def folder_model_id(model_id: str) -> str:
    """The model an output folder is recorded for: the id in its canonical form (`hf:` folders resolved; a timm
    name with or without "timm:")."""
    return comparable_id(model_id)


def model_id_of(model: nn.Module) -> str:
    """`folder_model_id` of the model a (pruned) model was built from."""
    return folder_model_id(model_source(model)["model"])


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of `folder`, or None where it has none (or one that is not a readable vbp manifest)."""
    try:
        doc = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    keys_ok = isinstance(doc, dict) and all(isinstance(doc.get(k), str) for k in ("command", "model"))
    return doc if keys_ok and doc.get("format") == FORMAT and isinstance(doc.get("files"), list) else None


def check_folder(
    folder: str | os.PathLike,
    command: str,
    model: str | None,
    overwrite: bool = False,
    option: str = "--output",
    replaced: bool = True,
) -> None:
    """Refuse, before any work, an output folder `command` may not write into: one that holds files and was not
    written by `command` for `model` (None: not known yet, not compared). replaced: the run replaces the folder
    whole, so it may hold no file its manifest does not list. With `overwrite`, any folder is accepted.
    Repairs what a killed run left beside the folder first (see the module's docstring)."""
    path = Path(folder)
    repair(path)
    if path.exists() and not path.is_dir():
        raise VbpError(f"{option} {folder} is a file; give a folder")
    parent = path.resolve().parent
    if replaced and parent.is_dir() and not os.access(parent, os.W_OK):
        raise VbpError(f"cannot write to {parent}, where {option} {folder} is built before it replaces the old one; "
                       f"choose another {option}")
    names = folder_files(path) if path.is_dir() else []
    if overwrite or not names:
        return
    manifest = read_manifest(path)
    again = f"give another {option}, or --overwrite to replace it whole"
    if manifest is None:
        raise VbpError(f"{option} {folder} already holds files vbp {command} did not write ({_some(names)}): {again}")
    if manifest["command"] != command:
        raise VbpError(
            f"{option} {folder} holds the output of vbp {manifest['command']} ({manifest['model']}), not of vbp "
            f"{command}: {again}"
        )
    if model is not None and manifest["model"] != model:
        raise VbpError(f"{option} {folder} holds the output of vbp {command} for {manifest['model']}, not {model}: {again}")
    extra = [name for name in names if name not in manifest["files"]]
    if replaced and extra:
        raise VbpError(
            f"{option} {folder} also holds files vbp {command} did not write ({_some(extra)}), which replacing it "
            f"would delete: move them out, {again}"
        )


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike, command: str, model: str) -> Iterator[Path]:
    """Yield an empty temporary folder beside `folder`; when the block ends without an error, its manifest is
    written and it replaces `folder` whole (the old one is removed); on an error or an interrupt it is removed and
    `folder` stays as it was. A symbolic link to a folder keeps pointing at the new one."""
    path = _real(folder)
    repair(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.vbp-{os.getpid()}."
    stage = Path(tempfile.mkdtemp(prefix=prefix, suffix=_NEW, dir=path.parent))
    aside = path.with_name(f"{prefix}{secrets.token_hex(4)}{_OLD}")
    try:
        yield stage
        _write_manifest(stage, command, model)
        _usual_permissions(stage)
        if path.exists():
            os.rename(path, aside)  # 1
        os.rename(stage, path)  # 2
    finally:
        if stage.exists():  # not swapped in: an error, or an interrupt before step 2
            if aside.exists() and not path.exists():
                os.rename(aside, path)  # the old folder back
            shutil.rmtree(stage, ignore_errors=True)
        if aside.exists() and path.exists():
            shutil.rmtree(aside, ignore_errors=True)  # 3


def claim_folder(folder: str | os.PathLike, command: str, model: str) -> None:
    """Record `command` and `model` as the owner of `folder` (created if needed), a folder the command fills file by
    file (see the module's docstring); the files it holds now are listed."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path / MANIFEST, _manifest_text(command, model, folder_files(path)))


def repair(folder: str | os.PathLike) -> None:
    """Finish what a killed run left beside `folder`: a folder it had renamed aside comes back when `folder` is
    missing (the kill came between the two renames of a swap), and every other temporary folder of a process that
    is gone is removed (a staged folder never swapped in, or an old one not yet removed)."""
    path = _real(folder)
    if not path.parent.is_dir():
        return
    prefix = f".{path.name}.vbp-"
    left = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink()]
    left = [p for p in left if not _writer_alive(p.name[len(prefix):])]
    for old in sorted(p for p in left if p.name.endswith(_OLD)):
        if not path.exists():
            with contextlib.suppress(FileNotFoundError):  # another run repairing at the same time did it
                os.rename(old, path)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for other in left:  # staged folders (and the .tmp ones export --hf made before)
        if other.exists() and not other.name.endswith(_OLD):
            shutil.rmtree(other, ignore_errors=True)


def _writer_alive(rest: str) -> bool:
    """Whether the process a temporary's name records ("PID.XXXX.new") still runs; a name without one: yes."""
    pid = rest.split(".", 1)[0]
    return not pid.isdigit() or _alive(int(pid))


def _real(folder: str | os.PathLike) -> Path:
    """The folder's path with symbolic links resolved: a link is left in place and its target replaced."""
    return Path(folder).resolve()


def folder_files(folder: str | os.PathLike) -> list[str]:
    """Every file under `folder` as sorted relative POSIX paths, but the manifest and the temporaries of vbp's
    atomic writes (`vbp.files.atomic_path`; one a kill left is removed by the next write of its file)."""
    folder = Path(folder)
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and not (p.name.startswith(".") and ".vbp-" in p.name)
    )


def _some(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _manifest_text(command: str, model: str, files: list[str]) -> str:
    return json.dumps({"format": FORMAT, "command": command, "model": model, "files": files}, indent=1) + "\n"


def _write_manifest(folder: Path, command: str, model: str) -> None:
    (folder / MANIFEST).write_text(_manifest_text(command, model, folder_files(folder)))


def _usual_permissions(folder: Path) -> None:
    """mkdtemp leaves 0700 (and some writers 0600): the permissions of a folder and files made the usual way."""
    umask = os.umask(0)
    os.umask(umask)
    for p in (folder, *folder.rglob("*")):
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
