"""The prepared GPU run: build the extension, run the CUDA tests, the GPU benchmarks and paper Table 12 end to
end, inside one declared time budget, and print a short summary last; logs, JSON and Markdown go to --out.

    make gpu-check OUT=DIR                                    # here: CUDA parts skipped, with a message
    make gpu-check GPU_PYTHON=python3 OUT=$OUT                # on the device machine (torch, triton, timm there)

The device machine runs one command of at most 10 minutes, so the whole run shares TOTAL_BUDGET_S: the steps
run most valuable first, each as its own process under min(its own limit, what is left of the budget), and a
step that cannot get its minimum from what is left is skipped with a line saying so (`allot`, `plan`).
Everything written to --out is rewritten after every step, never only at the end, so a run cut short still
brings its results back: summary.json (environment, plan, steps, the GPU goals), summary.md (the same as
tables, with the tail of each failed step's log), logs.tar.gz (every step's log, pytest's JUnit XML, the
benchmarks' JSON, table12.json/md), and current.log, the output of the step running now (deleted after it).
That is at most four files, inside what a device command brings back (eight).
"""

import argparse
import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
# One device command runs at most 600 s; 60 s are left for starting Python, reading the versions and the
# last summary.
TOTAL_BUDGET_S = 540
CUDA_TESTS = [
    "tests/test_ops.py",
    "tests/test_activation_moments_kernel.py",
    "tests/test_linear_activation_kernel.py",
    "tests/test_compact.py",
    "tests/test_calibrate.py",
    "tests/test_cuda_sass.py",
]


@dataclass(frozen=True)
class Step:
    """One step of the run: its own time limit, the least time worth starting it with, and what it needs:
    "any" (runs on a CPU too), "cuda", or "onnxruntime-gpu" (CUDA and onnxruntime's CUDA provider)."""

    name: str
    limit_s: int
    min_s: int
    needs: str
    what: str


# Most valuable first. The limits add up to more than the budget: a step that ends early leaves its time to the
# later ones, and `allot` clips each to what is left.
STEPS = (
    Step("build", 180, 60, "cuda", "the extension with its CUDA kernels (setup.py build_ext --inplace, sm_90)"),
    Step("cuda_tests", 180, 30, "any", "the CUDA tests: native ops, Triton kernels at full size, compact, calibrate"),
    Step("stats_kernel", 90, 30, "cuda", "GELU + Welford kernel vs copy bandwidth, eager and torch.compile"),
    Step("calibration", 120, 40, "cuda", "calibration throughput of DeiT-B, bf16 batch 256, vs plain inference"),
    Step("compact_mlp", 150, 60, "cuda", "compact_mlp vs eager and torch.compile at DeiT-B's pruned widths, bf16"),
    Step("table12", 240, 60, "cuda", "paper Table 12 end to end, bf16 batch 256 (DeiT-B first)"),
    Step("onnxruntime_gpu", 90, 45, "onnxruntime-gpu", "DeiT-B full vs pruned 55% under onnxruntime's CUDA provider"),
)


def allot(step: Step, left_s: float, budget_s: float = TOTAL_BUDGET_S) -> tuple[int | None, str]:
    """(seconds the step may run, "") with left_s of the budget left, or (None, why it is skipped)."""
    if left_s < step.min_s:
        return None, (f"skipped: {max(left_s, 0):.0f} s left of the {budget_s:.0f} s budget, "
                      f"{step.name} needs at least {step.min_s} s")
    return int(min(step.limit_s, left_s)), ""


def plan(steps=STEPS, budget_s: float = TOTAL_BUDGET_S, available: Callable[[Step], str] = lambda s: "") -> list[dict]:
    """The worst case, every step that can run here (`available`, as in `run_steps`) running to its limit:
    [{step, limit_s, skipped}] (limit_s None when skipped)."""
    left, rows = budget_s, []
    for s in steps:
        missing = available(s)
        limit, why = (None, f"skipped: {missing}") if missing else allot(s, left, budget_s)
        rows.append({"step": s.name, "limit_s": limit, "skipped": why})
        left -= limit or 0
    return rows


def run_steps(
    steps,
    budget_s: float,
    run_one: Callable[[Step, int], dict],
    available: Callable[[Step], str] = lambda s: "",
    clock: Callable[[], float] = time.monotonic,
    after_each: Callable[[list[dict]], None] = lambda rows: None,
    started: float | None = None,
) -> list[dict]:
    """Run `steps` in order inside `budget_s` seconds of `clock`. `available(step)` says why a step cannot run
    here ("" when it can); `run_one(step, limit_s)` runs it and returns {status, seconds, ...}. Returns one row
    per step, {step, status, seconds, limit_s}, and hands the rows so far to `after_each` after every step.
    The budget counts from `started` (a reading of `clock`; default now)."""
    started, rows = clock() if started is None else started, []
    for s in steps:
        missing = available(s)
        if missing:
            row = {"step": s.name, "status": f"skipped: {missing}", "seconds": 0.0, "limit_s": None}
        else:
            limit, why = allot(s, budget_s - (clock() - started), budget_s)
            if limit is None:
                row = {"step": s.name, "status": why, "seconds": 0.0, "limit_s": None}
            else:
                row = {"step": s.name, **run_one(s, limit), "limit_s": limit}
        rows.append(row)
        print(f"{s.name}: {row['status']} in {row['seconds']} s"
              + (f" (limit {row['limit_s']} s)" if row["limit_s"] else ""), flush=True)
        after_each(rows)
    return rows


def command(step: Step, py: str, logs: Path) -> list[str]:
    """The process that runs `step`; its logs and result files go to `logs`."""
    bench = [py, "-m", "pytest", "-q", "-s", "--benchmark-only", "-p", "no:cacheprovider"]
    return {
        "build": [py, "setup.py", "build_ext", "--inplace"],
        "cuda_tests": [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *CUDA_TESTS,
                       f"--junitxml={logs / 'tests.xml'}"],
        "stats_kernel": [*bench, "benchmarks/bench_activation_moments.py", "-k", "against_copy",
                         f"--benchmark-json={logs / 'bench_activation_moments.json'}"],
        "calibration": [*bench, "benchmarks/bench_activation_moments.py", "-k", "calibration_throughput",
                        f"--benchmark-json={logs / 'bench_calibration.json'}"],
        # max-autotune compiles every shape for a while: DeiT-B's pruned width, odd and padded, in bf16
        "compact_mlp": [*bench, "benchmarks/bench_compact_mlp.py", "-k", "(1382 or 1384) and bfloat16",
                        f"--benchmark-json={logs / 'bench_compact.json'}"],
        "table12": [py, "benchmarks/table12.py", "--out", str(logs)],
        "onnxruntime_gpu": [py, str(Path(__file__).resolve()), "--onnx-benchmark", "--out", str(logs)],
    }[step.name]


def run_process(cmd: list[str], limit_s: int, env: dict, live_log: Path, log: Path) -> dict:
    """Run cmd with its output to live_log (moved to log afterwards); {status, seconds}."""
    started = time.perf_counter()
    with open(live_log, "w") as f:
        # its own process group, so that a step stopped at its limit takes its children with it (nvcc, inductor's
        # compile workers) instead of leaving them to slow the next step down
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = proc.wait(timeout=limit_s)
            status = "ok" if returncode == 0 else f"failed ({returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out ({limit_s} s)"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    shutil.move(live_log, log)
    row = {"status": status, "seconds": round(time.perf_counter() - started, 1)}
    tally = pytest_tally(log.read_text(errors="replace"))
    if tally:
        row["tests"] = tally
    return row


def pytest_tally(text: str) -> str:
    """pytest's closing counts ("12 passed, 3 skipped"), or ""."""
    found = re.findall(r"^=*\s*((?:\d+ (?:passed|failed|skipped|errors?|xfailed|xpassed|deselected)(?:, )?)+)",
                       text, re.M)
    return found[-1].strip().rstrip(",") if found else ""


# --- the GPU goals, read from the steps' logs ---------------------------------------------------------------

GOALS = {
    "stats_kernel": "statistics kernel >= 80% of copy bandwidth on [50432, 3072] bf16",
    "calibration": "calibration throughput (Triton backend) >= 0.90 of plain inference, DeiT-B bf16 batch 256",
    "table12": "DeiT-B 55% pruned + compact end to end >= 1.50x, bf16 batch 256",
    "compact_mlp": "compact_mlp vs eager and torch.compile at the pruned widths (issue 4: >= 1.3x eager at odd "
                   "widths, >= parity with torch.compile)",
}


def read_goals(logs: Path) -> dict:
    """Each goal of GOALS: {goal, value, met} from the logs there; value None while not measured."""
    def text(name):
        p = logs / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    goals = {k: {"goal": g, "value": None, "met": None} for k, g in GOALS.items()}
    for line in text("stats_kernel").splitlines():
        if "{" in line and "kernel_vs_copy" in line:  # pytest's progress dots may stand before the printed dict
            info = ast.literal_eval(line[line.index("{"):])
            ratio = info["kernel_vs_copy"]
            goals["stats_kernel"].update(
                value=f"{ratio:.0%} of copy ({info['kernel_GBps']:.0f} vs {info['copy_GBps']:.0f} GB/s); "
                      f"{info['speedup_vs_eager']:.1f}x eager, {info['speedup_vs_compile']:.1f}x torch.compile",
                met=ratio >= 0.80)
    rates = dict(re.findall(r"^[.sFE]*(inference|triton|torch|triton\+covariance) ([\d.]+) images/s",
                            text("calibration"), re.M))
    if "inference" in rates and "triton" in rates:
        ratios = {k: float(v) / float(rates["inference"]) for k, v in rates.items() if k != "inference"}
        goals["calibration"].update(
            value=f"{float(rates['inference']):.0f} images/s inference; "
                  + ", ".join(f"{k} {r:.2f}" for k, r in ratios.items()),
            met=ratios["triton"] >= 0.90)
    rows = re.findall(r"^\| (768->138[24]->768) \| (\w+) \| (\d+) \|.*\| ([\d.]+)x \| ([\d.]+)x \|$",
                      text("compact_mlp"), re.M)
    if rows:
        odd = [r for r in rows if r[0] == "768->1382->768"]
        goals["compact_mlp"].update(
            value="; ".join(f"{w.split('->')[1]} {d} {t} tokens: {e}x eager, {c}x compile" for w, d, t, e, c in rows),
            met=bool(odd) and all(float(e) >= 1.3 and float(c) >= 1.0 for _, _, _, e, c in odd))
    ups = re.findall(r"^deit_base_patch16_224 55% (\w+): .*?pruned\+compact ([\d.]+)x(?:.*?pruned\+compact compiled "
                     r"([\d.]+)x)?", text("table12"), re.M)
    if ups:
        best = max(float(x) for _, eager, compiled in ups for x in (eager, compiled) if x)
        goals["table12"].update(
            value="; ".join(f"{scope} plan: {eager}x eager" + (f", {compiled}x compiled" if compiled else "")
                            for scope, eager, compiled in ups),
            met=best >= 1.50)
    return goals


# --- writing the results ------------------------------------------------------------------------------------

def write_results(out: Path, logs: Path, facts: dict, budget_s: float, rows: list[dict], planned=()) -> None:
    """summary.json, summary.md and logs.tar.gz in out, from what the steps have left so far (`planned`: `plan`'s
    rows)."""
    goals = read_goals(logs)
    onnx = logs / "onnxruntime_gpu.log"
    onnx_lines = [x for x in onnx.read_text(errors="replace").splitlines() if x.startswith("onnxruntime ")] \
        if onnx.exists() else []
    summary = {"environment": facts, "budget_s": budget_s, "plan": list(planned), "steps": rows,
               "goals": goals, "onnxruntime_gpu": onnx_lines[-1] if onnx_lines else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(markdown(summary, logs))
    with tarfile.open(out / "logs.tar.gz.part", "w:gz") as tar:
        for p in sorted(logs.iterdir()):
            tar.add(p, arcname=f"logs/{p.name}")
    os.replace(out / "logs.tar.gz.part", out / "logs.tar.gz")


def markdown(summary: dict, logs: Path) -> str:
    facts = summary["environment"]
    lines = [f"# GPU check, {facts.get('date', '')}", "",
             ", ".join(f"{k} {v}" for k, v in facts.items() if k != "date"), "",
             f"Budget {summary['budget_s']:.0f} s.", "",
             "| step | status | seconds | limit (s) | tests |", "|---|---|---:|---:|---|"]
    for r in summary["steps"]:
        lines.append(f"| {r['step']} | {r['status']} | {r['seconds']} | {r['limit_s'] or ''} | {r.get('tests', '')} |")
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    for g in summary["goals"].values():
        met = "not measured" if g["met"] is None else ("yes" if g["met"] else "NO")
        lines.append(f"| {g['goal']} | {g['value'] or ''} | {met} |")
    if summary["onnxruntime_gpu"]:
        lines += ["", summary["onnxruntime_gpu"]]
    if (logs / "table12.md").exists():
        lines += ["", (logs / "table12.md").read_text()]
    for r in summary["steps"]:
        log = logs / f"{r['step']}.log"
        if r["status"] != "ok" and not r["status"].startswith("skipped") and log.exists():
            tail = log.read_text(errors="replace").splitlines()[-30:]
            lines += ["", f"## {r['step']}: the last lines of its log", "", "```", *tail, "```"]
    return "\n".join(lines) + "\n"


# --- onnxruntime's CUDA provider (a step only where onnxruntime-gpu is installed) ----------------------------

def onnx_benchmark(out: Path, provider: str, model_name: str, batch: int, img_size: int | None) -> None:
    """DeiT-B (or model_name) full and pruned by 55% per layer, exported to ONNX and timed in onnxruntime."""
    import copy
    import statistics

    import onnxruntime as ort
    import timm
    import torch

    import vbp

    torch.manual_seed(0)
    kwargs = {"img_size": img_size} if img_size else {}
    model = timm.create_model(model_name, **kwargs).eval()
    size = tuple(model.pretrained_cfg["input_size"][:1]) + ((img_size, img_size) if img_size else
                                                              tuple(model.pretrained_cfg["input_size"][1:]))
    stats = vbp.calibrate(model, [torch.randn(8, *size)], progress=False, backend="torch")
    pruned = vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.55, scope="layer"), stats)
    dtype = torch.float16 if provider == "CUDAExecutionProvider" else torch.float32
    images = torch.randn(batch, *size, dtype=dtype)
    ms = {}
    for name, m in {"full": model, "pruned": pruned}.items():
        path = out / f"{name}.onnx"
        with torch.inference_mode():
            torch.onnx.export(m.to(dtype), (images,), str(path), input_names=["images"], output_names=["logits"],
                              dynamo=False)
        session = ort.InferenceSession(str(path), providers=[provider])
        feed = {"images": images.numpy()}
        for _ in range(3):
            session.run(None, feed)
        times = []
        for _ in range(10):
            started = time.perf_counter()
            session.run(None, feed)
            times.append(1e3 * (time.perf_counter() - started))
        ms[name] = statistics.median(times)
        path.unlink()
    print(f"onnxruntime {ort.__version__} {provider} {model_name} {str(dtype)[6:]} batch {batch}: "
          f"full {ms['full']:.2f} ms, pruned 55% layer {ms['pruned']:.2f} ms, {ms['full'] / ms['pruned']:.2f}x",
          flush=True)


def onnxruntime_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


# --- main ---------------------------------------------------------------------------------------------------

def environment(cuda: bool) -> dict:
    import importlib.metadata

    import torch

    facts = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": sys.version.split()[0],
             "torch": torch.__version__, "cuda": torch.version.cuda,
             "device": torch.cuda.get_device_name() if cuda else "none (CPU only)"}
    for name in ("triton", "timm", "transformers", "torchvision", "onnxruntime"):
        try:
            facts[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            facts[name] = "not installed"
    return facts


def main() -> None:
    started = time.monotonic()  # the budget counts from here: starting Python and torch are part of the command
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=TOTAL_BUDGET_S,
                        help=f"seconds for all steps together, at most {TOTAL_BUDGET_S} (the default)")
    parser.add_argument("--onnx-benchmark", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--onnx-provider", default="CUDAExecutionProvider", help=argparse.SUPPRESS)
    parser.add_argument("--onnx-model", default="deit_base_patch16_224", help=argparse.SUPPRESS)
    parser.add_argument("--onnx-batch", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--onnx-img-size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.onnx_benchmark:
        onnx_benchmark(out, args.onnx_provider, args.onnx_model, args.onnx_batch, args.onnx_img_size)
        return
    budget_s = min(args.budget, TOTAL_BUDGET_S)

    import torch

    cuda = torch.cuda.is_available()
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'python'}{os.pathsep}{ROOT}", PYTHONUNBUFFERED="1")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))  # the extension's build: ninja's parallel jobs
    facts = environment(cuda)
    print(json.dumps(facts), flush=True)
    steps = STEPS
    if not cuda:
        # Without CUDA the Triton kernels run in Triton's interpreter, far slower than compiled: the tests that
        # run here get the budget (the GPU steps are skipped).
        steps = tuple(replace(s, limit_s=int(budget_s)) if s.needs == "any" else s for s in STEPS)
    ort_cuda = onnxruntime_cuda()

    def available(s: Step) -> str:
        if s.needs == "cuda" and not cuda:
            return "no CUDA device"
        if s.needs == "onnxruntime-gpu" and not (cuda and ort_cuda):
            return "needs a CUDA device and onnxruntime-gpu (onnxruntime's CUDAExecutionProvider)"
        return ""

    planned = plan(steps, budget_s, available)
    for row in planned:
        print(f"plan: {row['step']} " + (f"up to {row['limit_s']} s" if row["limit_s"] else row["skipped"]))
    if not cuda:
        print("no CUDA device: the extension is the one built for this machine; GPU benchmarks are skipped")
    logs = Path(tempfile.mkdtemp(prefix="gpu-check-logs-"))
    (logs / "environment.json").write_text(json.dumps(facts, indent=1))

    def run_one(s: Step, limit_s: int) -> dict:
        return run_process(command(s, sys.executable, logs), limit_s, env, out / "current.log", logs / f"{s.name}.log")

    def after_each(rows: list[dict]) -> None:
        write_results(out, logs, facts, budget_s, rows, planned)

    after_each([])
    rows = run_steps(steps, budget_s, run_one, available, after_each=after_each, started=started)
    print("\n| step | status | seconds | tests |\n|---|---|---:|---|")
    for r in rows:
        print(f"| {r['step']} | {r['status']} | {r['seconds']} | {r.get('tests', '')} |")
    print("\n| goal | measured | met |\n|---|---|---|")
    for g in read_goals(logs).values():
        print(f"| {g['goal']} | {g['value'] or ''} | {'not measured' if g['met'] is None else g['met']} |")
    if (logs / "table12.md").exists():
        print("\n" + (logs / "table12.md").read_text())
    print(f"results: {out / 'summary.md'}, {out / 'summary.json'}, {out / 'logs.tar.gz'}")
    shutil.rmtree(logs, ignore_errors=True)
    sys.exit(0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in rows) else 1)


if __name__ == "__main__":
    main()
