"""How vbp writes and reads its files.

Every write is atomic: it goes to a temporary name in the target folder, then is renamed over the
target, so a failed or interrupted run never leaves a half-written file and never touches a file the
user already had until the new one is complete. Tensors go to safetensors files whose metadata holds a
JSON document under the key "vbp" (with a "format" tag); nothing is ever unpickled.
"""

import contextlib
import csv
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import VbpError


def check_writable(path: str | os.PathLike) -> Path:
    """Create the parent folder if needed and check a file can be written there, before any work."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VbpError(f"cannot create the folder for {path}: {exc.strerror}; choose another output path") from exc
    if path.is_dir():
        raise VbpError(f"{path} is a folder; give a file name")
    if not os.access(path.parent, os.W_OK):
        raise VbpError(f"cannot write to {path.parent}: permission denied; choose another output path")
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Remove temporaries of `path` left by writers that died (a kill -9, a power cut): their process is gone."""
    for stale in path.parent.glob(f".{path.name}.vbp-*.tmp"):
        pid = stale.name.rsplit(".vbp-", 1)[1].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed.

    The temporary's name holds the writer's process id, so one left by a killed run is removed by the next."""
    path = check_writable(path)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.vbp-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp (and writers that replace the file, like safetensors) leave 0600: give the usual permissions
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv_atomic(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write dict rows (all with the first row's keys) as CSV with a header, atomically; returns the path."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, text.getvalue())


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Atomically write `tensors` (moved to CPU, made contiguous) with `meta` as JSON metadata.

    A tensor tied to an earlier one (the same view of one storage: an HF model's embeddings and output head) is
    written once; the metadata's "tied" maps each later name to the first, and `read_safetensors` restores it."""
    cpu, tied, first_of, storages = {}, {}, {}, set()
    for k, v in tensors.items():
        view = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride(), v.dtype, v.device)
        if view in first_of and v.numel():
            tied[k] = first_of[view]
            continue
        first_of[view] = k
        v = v.detach().cpu().contiguous()
        # another view of a storage already written (safetensors refuses shared storage): its own copy
        cpu[k] = v.clone() if v.untyped_storage().data_ptr() in storages else v
        storages.add(cpu[k].untyped_storage().data_ptr())
    with atomic_path(path) as tmp:
        save_file(cpu, tmp, metadata={"vbp": json.dumps({**meta, "tied": tied} if tied else meta)})


def read_json(path: str | os.PathLike, expected_format: str, what: str, how_to_make: str = "") -> dict:
    """The JSON document of a vbp file (a plan, a latency table); clear errors for a missing, unreadable or
    foreign file. what: the kind of file, for messages; how_to_make: the command that makes one."""
    fix = f"; {how_to_make}" if how_to_make else ""
    if not os.path.lexists(path):
        raise VbpError(f"{what} {path} does not exist{fix}")
    check_input_file(path, what)
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        kind = file_kind(path)
        if kind:
            raise VbpError(f"{path} is {kind}, not a vbp {what}{fix}") from exc
        raise VbpError(f"{path} is not a readable {what} ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != expected_format:
        kind = file_kind(path)
        if kind and kind != "a JSON file":
            raise VbpError(f"{path} is {kind}, not a vbp {what}{fix}")
        raise VbpError(f"{path} is not a vbp {what} (expected format '{expected_format}'){fix}")
    return doc


def read_safetensors(
    path: str | os.PathLike, expected_format: str | tuple[str, ...], what: str
) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a vbp safetensors file and its JSON metadata; clear errors for a missing, corrupt or foreign file.

    expected_format: the format tag, or the tags of every version that can be read."""
    formats = (expected_format,) if isinstance(expected_format, str) else expected_format
    check_input_file(path, f"{what} file")
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads(f.metadata()["vbp"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        kind = file_kind(path)
        if kind:
            noun, give = _EXPECTED.get(what, (f"a vbp {what} file", f"a vbp {what} file"))
            raise VbpError(f"{path} is {kind}, not {noun}: give {give}") from exc
        raise VbpError(
            f"{path} is not a readable vbp {what} file ({exc}); it may be truncated or of another kind"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") not in formats:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise VbpError(f"{path} holds '{found}', not vbp {what} ('{formats[0]}')")
    tied = meta.pop("tied", {})
    if not isinstance(tied, dict) or not all(isinstance(k, str) and v in tensors and k not in tensors for k, v in tied.items()):
        raise VbpError(f"{path} has malformed metadata (tied tensors that name no tensor of the file); save it again")
    tensors.update({alias: tensors[target] for alias, target in tied.items()})
    return tensors, meta


# What each vbp file is, by its format tag, and the file an output folder holds it in: for messages about a file
# given where another kind was expected, or a folder given where a file was.
_KINDS = {
    "vbp-stats/": "vbp statistics",
    "vbp-model/": "a vbp pruned model",
    "vbp-plan/": "a vbp pruning plan",
    "vbp-latency/": "a vbp latency table",
    "vbp-output/": "an output folder's manifest",
}
_EXPECTED = {"statistics": ("vbp statistics", "the file of vbp calibrate --stats FILE"),
             "pruned model": ("a vbp pruned model", "DIR/model.safetensors of vbp prune --output DIR")}
_FILE_IN_FOLDER = {"statistics file": "stats.safetensors", "pruned model file": "model.safetensors",
                   "plan file": "plan.json"}


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path if it is a file this process can read; else a VbpError that says what it is instead: missing,
    a folder (naming the file vbp writes in such a folder, when it holds one), a symbolic link loop, unreadable.
    what: the kind of file, for messages ("statistics file")."""
    path = Path(path)
    try:
        os.stat(path)
    except FileNotFoundError as exc:
        raise VbpError(f"{what} {path} does not exist") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise VbpError(f"{what} {path} is a symbolic link that leads back to itself: give the file itself") from exc
        raise VbpError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if path.is_dir():
        inside = _FILE_IN_FOLDER.get(what)
        hint = f"give the file in it, {path / inside}" if inside and (path / inside).is_file() else "give a file"
        raise VbpError(f"{what} {path} is a folder, not a file: {hint}")
    if not os.access(path, os.R_OK):
        raise VbpError(f"cannot read {what} {path}: permission denied")
    return path


def file_kind(path: str | os.PathLike) -> str:
    """What a file holds, in words ("a vbp pruning plan", "an empty file", "a JSON file", "an ONNX model"), when it can
    be told cheaply; "" when not."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return ""
    if size == 0:
        return "an empty file"
    if head.lstrip()[:1] in (b"{", b"[") and size < 2**26:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = None  # not JSON after all (a safetensors header's length can start with "{")
        else:
            return _kind_of(doc.get("format") if isinstance(doc, dict) else None) or "a JSON file"
    if head.startswith(b"GGUF"):
        return "a GGUF model file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a torch.save checkpoint, perhaps)"
    if path.suffix.lower() == ".onnx":
        return "an ONNX model"
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("vbp", "{}"))
    except (SafetensorError, OSError, ValueError):
        return ""
    tag = meta.get("format") if isinstance(meta, dict) else None
    return _kind_of(tag) or "a safetensors file (not vbp's)"


def _kind_of(tag) -> str:
    """The words for a vbp format tag ("vbp-plan/1" -> "a vbp pruning plan"); "" for anything else."""
    if not isinstance(tag, str):
        return ""
    return next((f"{words} ('{tag}')" for prefix, words in _KINDS.items() if tag.startswith(prefix)), "")
