"""The GPU machine's twin on a CPU machine: the prepared GPU run proven against the device's versions.

    make gpu-twin [TWIN_OUT=out/gpu-twin]     # creates .venv-gpu-twin (requirements-gpu-twin.txt), then this

Run with the twin's Python (.venv-gpu-twin/bin/python, Python 3.12 with the device's torch 2.11, triton 3.6,
transformers 5.17, ...). The project is imported from the working tree (PYTHONPATH=python:.), as on the device,
never installed. Steps, each recorded pass/fail with its duration in OUT/twin.json and OUT/twin.md (rewritten
after every step):

  versions       the installed versions are requirements-gpu-twin.txt's pins, Python 3.12
  build          setup.py build_ext --inplace from scratch against torch 2.11's headers (CUDA kernels included when a
                 CUDA toolkit is found, as setup.py finds it), then vbp._C imports and says what it was built with
  gpu_check      scripts/gpu_check.py --out OUT/gpu_check in CPU mode (its CUDA-path tests, the budget, the
                 summary files; the GPU steps skipped with their lines)
  interpreter    the Triton kernels' tests and the Triton paths of compact/calibrate under TRITON_INTERPRET=1
  hopper         tests/test_hopper_compile.py: every Triton kernel compiled for sm_90 by triton 3.6's ptxas
  benchmarks     the GPU benchmarks and Table 12 import and collect under the device's versions (they run only
                 on a GPU)
  library        the tests that meet transformers, torchvision and timm (families, loading, hardening), and
                 tests/test_gpu_check.py
  onnx           the onnxruntime step's code (export, session, timing) on a tiny DeiT with the CPU provider
"""

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements-gpu-twin.txt"
PYTHON = "3.12"
# the Triton kernels' own test files (test_activation_moments_kernel.py, test_linear_activation_kernel.py, or what they
# are renamed to), then the Triton paths of the library
INTERPRETER_TESTS = [
    *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("tests/test_*kernel*.py")),
    "tests/test_compact.py::test_triton_kernel_matches_float64",
    "tests/test_compact.py::test_compact_with_the_triton_kernel_equals_the_native_one",
    "tests/test_calibrate.py::test_triton_and_torch_backends_agree",
    "tests/test_calibrate.py::test_skipping_non_finite_batches_counts_them",
]
GPU_BENCHMARKS = ["benchmarks/bench_activation_moments.py", "benchmarks/bench_compact_mlp.py"]
LIBRARY_TESTS = [
    "tests/test_families.py",
    "tests/test_hardening_loading.py",
    "tests/test_hardening_user_models.py",
    "tests/test_data_loss.py",
    "tests/test_gpu_check.py",
]


def pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """{name: version} of the exact pins (name==version) in a requirements file."""
    found = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s#;]+)", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def check_versions() -> tuple[bool, str]:
    wrong = []
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON:
        wrong.append(f"Python {sys.version.split()[0]} (want {PYTHON})")
    for name, want in pins().items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = "missing"
        if have.split("+")[0] != want:
            wrong.append(f"{name} {have} (want {want})")
    return not wrong, "; ".join(wrong) or f"Python {sys.version.split()[0]}, all {len(pins())} pins installed"


def pytest_tally(text: str) -> str:
    found = re.findall(r"^=*\s*((?:\d+ (?:passed|failed|skipped|errors?|xfailed|xpassed|deselected)(?:, )?)+)",
                       text, re.M)
    if found:
        return found[-1].strip().rstrip(",")
    collected = re.findall(r"^(\d+ tests? collected)", text, re.M)
    return collected[-1] if collected else ""


def run(name: str, cmd: list[str], out: Path, env: dict, limit_s: int) -> tuple[bool, str]:
    """cmd with its output in OUT/NAME.log; (passed, detail)."""
    log = out / f"{name}.log"
    with open(log, "w") as f:
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=limit_s)
            rc = done.returncode
        except subprocess.TimeoutExpired:
            return False, f"timed out ({limit_s} s)"
    text = log.read_text(errors="replace")
    detail = pytest_tally(text) or f"exit {rc}"
    if rc != 0:
        detail += "; " + " / ".join(text.strip().splitlines()[-3:])[-400:]
    return rc == 0, detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gpu-twin")
    parser.add_argument("--only", nargs="*", help="run only these steps")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'python'}{os.pathsep}{ROOT}", PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1")
    env.pop("TRITON_INTERPRET", None)
    env.setdefault("MAX_JOBS", "2")
    interp = dict(env, TRITON_INTERPRET="1")
    build_temp = Path(tempfile.mkdtemp(prefix="vbp-twin-build-"))
    pytest = [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
    extension = ("import torch, vbp.ops as o; assert o.has_extension(), 'vbp._C does not load'; "
                 "print('vbp._C loads; CUDA kernels:', o.extension_has_cuda())")
    steps = {
        "versions": None,
        # a fresh temporary folder for the objects: ninja rebuilds nothing it finds up to date, the device has none
        "build": [[py, "setup.py", "build_ext", "--inplace", "--build-temp", str(build_temp)], [py, "-c", extension]],
        "gpu_check": [[py, "scripts/gpu_check.py", "--out", str(out / "gpu_check")]],
        "interpreter": [[*pytest, *INTERPRETER_TESTS]],
        "hopper": [[*pytest, "tests/test_hopper_compile.py"]],
        "benchmarks": [[*pytest, "--collect-only", *GPU_BENCHMARKS], [py, "benchmarks/table12.py", "--help"]],
        "library": [[*pytest, *LIBRARY_TESTS]],
        "onnx": [[py, "scripts/gpu_check.py", "--onnx-benchmark", "--onnx-provider", "CPUExecutionProvider",
                  "--onnx-model", "deit_tiny_patch16_224", "--onnx-img-size", "32", "--onnx-batch", "2",
                  "--out", str(out)]],
    }
    limits = {"build": 1200, "gpu_check": 900, "interpreter": 900, "hopper": 900, "benchmarks": 300, "library": 1200,
              "onnx": 300}
    packages = ("torch", "triton", "transformers", "timm", "torchvision", "onnxruntime", "numpy")
    record = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": sys.version.split()[0],
              **{name: importlib.metadata.version(name) for name in packages}, "steps": []}

    def save():
        (out / "twin.json").write_text(json.dumps(record, indent=1))
        lines = [f"# GPU twin, {record['date']}", "",
                 ", ".join(f"{k} {record[k]}" for k in ("python", *packages)), "",
                 "| step | result | seconds | detail |", "|---|---|---:|---|"]
        for s in record["steps"]:
            lines.append(f"| {s['step']} | {'pass' if s['passed'] else 'FAIL'} | {s['seconds']} | {s['detail']} |")
        (out / "twin.md").write_text("\n".join(lines) + "\n")

    for name, cmds in steps.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        if cmds is None:
            passed, detail = check_versions()
        else:
            details = []
            for i, cmd in enumerate(cmds):
                passed, detail = run(name if i == 0 else f"{name}_{i}", cmd, out,
                                     interp if name == "interpreter" else env, limits[name])
                details.append(detail)
                if not passed:
                    break
            detail = "; ".join(details)
            if name == "gpu_check" and (out / "gpu_check" / "summary.json").exists():
                rows = json.loads((out / "gpu_check" / "summary.json").read_text())["steps"]
                ran = [f"{r['step']} {r['status']}" + (f" ({r['tests']})" if r.get("tests") else "")
                       for r in rows if not r["status"].startswith("skipped")]
                skipped = [r["step"] for r in rows if r["status"].startswith("skipped")]
                detail += "; " + ", ".join(ran) + (f"; skipped here: {', '.join(skipped)}" if skipped else "")
            if name == "build":
                detail = (out / "build_1.log").read_text().strip() if passed else detail
            if name == "onnx" and passed:  # its timings on a shared CPU mean nothing: only that it ran is kept
                detail = ("DeiT-Tiny full and pruned exported (TorchScript exporter) and run by onnxruntime's CPU "
                          "provider")
        record["steps"].append({"step": name, "passed": passed, "seconds": round(time.perf_counter() - started, 1),
                                "detail": detail})
        print(f"{name}: {'pass' if passed else 'FAIL'} in {record['steps'][-1]['seconds']} s: {detail}", flush=True)
        save()
    shutil.rmtree(build_temp, ignore_errors=True)
    print((out / "twin.md").read_text())
    sys.exit(0 if all(s["passed"] for s in record["steps"]) else 1)


if __name__ == "__main__":
    main()
