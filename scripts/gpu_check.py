"""The prepared GPU run: build the extension, run the CUDA tests, the GPU benchmarks and paper Table 12 end to
end, and print a short summary last; full logs, JSON and Markdown go to --out.

    make gpu-check OUT=DIR                                    # here: CUDA parts skipped, with a message
    make gpu-check GPU_PYTHON=python3 OUT=$OUT                # on the device machine (torch, triton, timm there)

Every step runs as its own process with a time limit, so one that fails or hangs leaves the others' results.
Budget on an H100: about 7 minutes (build ~1.5, tests ~1, benchmarks ~3, Table 12 ~2).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_TESTS = [
    "tests/test_ops.py",
    "tests/test_gelu_welford_kernel.py",
    "tests/test_linear_activation_kernel.py",
    "tests/test_compact.py",
    "tests/test_calibrate.py",
    "tests/test_cuda_sass.py",
]


def step(name: str, cmd: list[str], out: Path, limit: int, env: dict) -> dict:
    """Run one step, its output to out/NAME.log; returns {step, status, seconds}."""
    started = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit)
            status = "ok" if done.returncode == 0 else f"failed ({done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out ({limit} s)"
    row = {"step": name, "status": status, "seconds": round(time.perf_counter() - started, 1)}
    print(f"{name}: {status} in {row['seconds']} s (log: {out / (name + '.log')})", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    import torch

    cuda = torch.cuda.is_available()
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'python'}{os.pathsep}{ROOT}", PYTHONUNBUFFERED="1")
    facts = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if cuda else "none (CPU only)",
    }
    (out / "environment.json").write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts), flush=True)
    py = sys.executable
    rows = []
    if cuda:
        rows.append(step("build", [py, "setup.py", "build_ext", "--inplace"], out, 300, env))
    else:
        print("no CUDA device: the extension is the one built for this machine; GPU benchmarks are skipped")
    rows.append(step("cuda_tests", [py, "-m", "pytest", "-q", "-rs", *CUDA_TESTS, f"--junitxml={out / 'tests.xml'}"],
                     out, 300, env))
    if cuda:
        bench = [py, "-m", "pytest", "-q", "-s", "--benchmark-only"]
        rows.append(step("bench_stats", [*bench, "benchmarks/bench_stats_kernel.py",
                                         f"--benchmark-json={out / 'bench_stats.json'}"], out, 240, env))
        rows.append(step("bench_compact", [*bench, "benchmarks/bench_compact_mlp.py", "-k", "1382 or 1384",
                                           f"--benchmark-json={out / 'bench_compact.json'}"], out, 300, env))
        rows.append(step("table12", [py, "benchmarks/table12.py", "--out", str(out)], out, 300, env))
    (out / "summary.json").write_text(json.dumps({"environment": facts, "steps": rows}, indent=1))
    print("\n| step | status | seconds |\n|---|---|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['status']} | {r['seconds']} |")
    if (out / "table12.md").exists():
        print("\n" + (out / "table12.md").read_text())
    sys.exit(0 if all(r["status"] == "ok" for r in rows) else 1)


if __name__ == "__main__":
    main()
