"""Write the embedded text corpora (python/vbp/assets/text_*.txt): sentences from the docstrings of Python's
standard library (PSF licence, see python/vbp/assets/TEXT_LICENSE.md), one per line.

Calibration, evaluation and distillation sentences come from disjoint sets of modules, so the texts never
overlap; the distillation text is every other module's, more unlabelled text to fine-tune text models on.
Run once with the pinned Python (3.11); the output is committed, so every machine reads the same texts.
"""

import contextlib
import importlib
import inspect
import io
import pkgutil
import re
import sys
import warnings
from pathlib import Path

CALIBRATION_MODULES = (
    "argparse asyncio.base_events asyncio.events asyncio.streams calendar cmd codecs collections concurrent.futures "
    "configparser contextlib copy csv dataclasses datetime decimal difflib doctest email.message email.utils enum "
    "fileinput fnmatch fractions ftplib functools getopt gettext glob gzip hashlib heapq hmac http.client "
    "http.cookiejar http.server imaplib inspect io ipaddress"
).split()
EVALUATION_MODULES = (
    "json logging logging.handlers mailbox mimetypes multiprocessing.pool netrc numbers optparse os pathlib pdb "
    "pickle pkgutil platform poplib pprint profile queue random sched secrets selectors shelve shlex shutil smtplib "
    "socket socketserver sqlite3 ssl statistics string subprocess tarfile tempfile textwrap threading timeit "
    "tokenize trace traceback turtle unittest.case urllib.parse urllib.request uuid warnings wave weakref zipfile"
).split()
# every other importable standard-library module: more unlabelled text to distil on (`vbp finetune --data`)
NOT_IMPORTED = set(
    "antigravity this idlelib tkinter turtle turtledemo ensurepip venv lib2to3 pydoc_data msilib winreg winsound nt "
    "msvcrt crypt nis ossaudiodev spwd sre_compile sre_constants sre_parse xxsubtype".split()
)
ASSETS = Path(__file__).resolve().parents[1] / "python" / "vbp" / "assets"


def _imports_quietly(name: str) -> bool:
    """Whether the module imports here (silencing what importing it prints or warns)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(name)
    except Exception:  # a platform's module (or one needing a missing C library): not text for us
        return False
    return True


def distillation_modules() -> list[str]:
    """The standard library's other public modules (and their packages' public submodules) that import quietly."""
    used = {name.split(".")[0] for name in CALIBRATION_MODULES + EVALUATION_MODULES}
    names = []
    for name in sorted(sys.stdlib_module_names - used - NOT_IMPORTED):
        if name.startswith("_") or not _imports_quietly(name):
            continue
        names.append(name)
        for sub in pkgutil.walk_packages(getattr(sys.modules[name], "__path__", []), prefix=name + "."):
            private = any(part.startswith("_") or part in ("test", "tests") for part in sub.name.split("."))
            if not private and _imports_quietly(sub.name):
                names.append(sub.name)
    return names


def sentences(module_names: list[str]) -> list[str]:
    """Sentences of 6 to 40 words from the docstrings of the modules' public members, de-duplicated, in order."""
    seen, out = set(), []
    for name in module_names:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""]
        for member_name, member in sorted(vars(module).items()):
            if not member_name.startswith("_") and getattr(member, "__module__", None) == module.__name__:
                docs.append(inspect.getdoc(member) or "")
                if inspect.isclass(member):  # and the class's own public methods
                    docs += [inspect.getdoc(m) or "" for n, m in sorted(vars(member).items()) if not n.startswith("_")]
        for doc in docs:
            for paragraph in doc.split("\n\n"):
                text = " ".join(line.strip() for line in paragraph.splitlines())
                out += [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text) if _usable(s, seen)]
    return out


def _usable(sentence: str, seen: set[str]) -> bool:
    """A prose sentence of 6 to 40 words, not seen before (recorded in `seen`)."""
    words = sentence.split()
    clean = " ".join(words)
    if not (6 <= len(words) <= 40 and clean[0].isupper() and clean.endswith(".")) or ">>>" in clean or clean in seen:
        return False
    seen.add(clean)
    return True


def main() -> None:
    calibration, evaluation = sentences(CALIBRATION_MODULES), sentences(EVALUATION_MODULES)
    evaluation = [s for s in evaluation if s not in set(calibration)]
    distillation = [s for s in sentences(distillation_modules()) if s not in set(calibration) | set(evaluation)]
    (ASSETS / "text_calibration.txt").write_text("\n".join(calibration) + "\n")
    (ASSETS / "text_evaluation.txt").write_text("\n".join(evaluation) + "\n")
    (ASSETS / "text_distillation.txt").write_text("\n".join(distillation) + "\n")
    print(
        f"Python {sys.version.split()[0]}: {len(calibration)} calibration, {len(evaluation)} evaluation, "
        f"{len(distillation)} distillation sentences"
    )


if __name__ == "__main__":
    main()
