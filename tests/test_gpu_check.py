"""The prepared GPU run fits one device command: a declared budget that the steps' limits share, steps past it
skipped with a message, results written after every step (scripts/gpu_check.py; no GPU, no subprocess)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_the_declared_budget_fits_one_device_command():
    assert gpu_check.TOTAL_BUDGET_S <= 540


def test_worst_case_plan_clips_every_limit_to_the_budget():
    rows = gpu_check.plan()
    limits = [r["limit_s"] for r in rows if r["limit_s"] is not None]
    assert sum(limits) <= gpu_check.TOTAL_BUDGET_S
    for step, row in zip(gpu_check.STEPS, rows):
        assert row["limit_s"] is None or step.min_s <= row["limit_s"] <= step.limit_s
    assert rows[0]["step"] == "build" and rows[0]["limit_s"] == gpu_check.STEPS[0].limit_s  # most valuable first
    # the steps' own limits add up to more than the budget, so the plan must have clipped or skipped some
    assert sum(s.limit_s for s in gpu_check.STEPS) > gpu_check.TOTAL_BUDGET_S
    assert any(r["skipped"] or r["limit_s"] < s.limit_s for s, r in zip(gpu_check.STEPS, rows))


def test_plan_leaves_out_what_cannot_run_here():
    rows = gpu_check.plan(available=lambda s: "" if s.needs == "any" else "no CUDA device")
    assert [r["step"] for r in rows if r["limit_s"]] == ["cuda_tests"]
    assert all(r["skipped"] == "skipped: no CUDA device" for r in rows if r["step"] != "cuda_tests")


def test_allot_clips_to_what_is_left_and_skips_below_the_minimum():
    step = gpu_check.Step("x", limit_s=100, min_s=30, needs="any", what="")
    assert gpu_check.allot(step, 500) == (100, "")
    assert gpu_check.allot(step, 45.7) == (45, "")
    limit, why = gpu_check.allot(step, 20, budget_s=540)
    assert limit is None
    assert why == "skipped: 20 s left of the 540 s budget, x needs at least 30 s"


def test_run_steps_skips_a_step_past_the_budget_and_reports_after_each():
    steps = [gpu_check.Step(n, limit_s=100, min_s=50, needs="any", what="") for n in ("a", "b", "c", "d")]
    now = [0.0]
    granted, reported = [], []

    def run_one(step, limit_s):
        granted.append((step.name, limit_s))
        now[0] += limit_s  # every step runs to its limit
        return {"status": "ok", "seconds": float(limit_s)}

    rows = gpu_check.run_steps(steps, 220, run_one, available=lambda s: "no CUDA device" if s.name == "d" else "",
                               clock=lambda: now[0], after_each=lambda rows: reported.append(list(rows)))
    assert granted == [("a", 100), ("b", 100)]  # c would get 20 s of 220, under its 50 s minimum
    assert rows[2]["status"] == "skipped: 20 s left of the 220 s budget, c needs at least 50 s"
    assert rows[3]["status"] == "skipped: no CUDA device"
    assert [len(r) for r in reported] == [1, 2, 3, 4]


def test_a_step_that_ends_early_leaves_its_time_to_the_next():
    steps = [gpu_check.Step(n, limit_s=300, min_s=10, needs="any", what="") for n in ("a", "b")]
    now = [0.0]
    granted = []

    def run_one(step, limit_s):
        granted.append(limit_s)
        now[0] += 40
        return {"status": "ok", "seconds": 40.0}

    gpu_check.run_steps(steps, 540, run_one, clock=lambda: now[0])
    assert granted == [300, 300]
    granted.clear()
    gpu_check.run_steps(steps, 320, run_one, clock=lambda: now[0])
    assert granted == [300, 280]


def test_results_are_written_before_the_first_step_and_read_the_goals(tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "out"
    logs.mkdir(), out.mkdir()
    (logs / "calibration.log").write_text("inference 1000.0 images/s\n.triton 950.5 images/s\n.torch 600 images/s\n")
    (logs / "table12.log").write_text(
        "deit_base_patch16_224 55% global: full 50.00 ms; pruned 1.30x, pruned+compact 1.40x, pruned compiled 1.35x, "
        "pruned+compact compiled 1.52x; FLOP ideal 1.54x (paper 1.44x)\n")
    gpu_check.write_results(out, logs, {"date": "today", "torch": "2.11.0"}, 540, [])
    assert {p.name for p in out.iterdir()} == {"summary.json", "summary.md", "logs.tar.gz"}
    goals = gpu_check.read_goals(logs)
    assert goals["calibration"]["met"] is True and "triton 0.95" in goals["calibration"]["value"]
    assert goals["table12"]["met"] is True and "1.52x compiled" in goals["table12"]["value"]
    assert goals["stats_kernel"]["met"] is None and goals["compact_mlp"]["met"] is None


def test_goals_are_read_from_the_lines_the_benchmarks_print(tmp_path):
    table12_spec = importlib.util.spec_from_file_location("table12", SCRIPT.parents[1] / "benchmarks" / "table12.py")
    table12 = importlib.util.module_from_spec(table12_spec)
    table12_spec.loader.exec_module(table12)
    row = {"model": "deit_base_patch16_224", "rate": 0.55, "scope": "layer", "ms": {"full": 40.0}, "flop_ideal": 1.54,
           "paper_speedup": 1.44, "speedup": {"pruned": 1.3, "pruned+compact": 1.45, "pruned compiled": 1.35,
                                              "pruned+compact compiled": 1.49}}
    (tmp_path / "table12.log").write_text(table12._line(row) + "\n")
    (tmp_path / "stats_kernel.log").write_text(
        ".{'copy_GBps': 4300.0, 'kernel_GBps': 3600.0, 'kernel_vs_copy': 0.837, 'kernel_with_output_GBps': 4000.0, "
        "'speedup_vs_eager': 5.0, 'speedup_vs_compile': 1.5, 'ms': {'copy': 0.14}}\n")
    (tmp_path / "compact_mlp.log").write_text(  # bench_compact_mlp.py's row on CUDA
        "\n| 768->1382->768 | bfloat16 | 50432 | compact_mlp 0.5 | eager 0.7 | compile 0.6 | triton 0.55 | 1.40x | 1.20x |"
        "\n.\n| 768->1384->768 | bfloat16 | 197 | compact_mlp 0.02 | eager 0.02 | compile 0.03 | triton 0.02 | 1.00x | "
        "1.50x |\n.")
    goals = gpu_check.read_goals(tmp_path)
    assert goals["table12"]["met"] is False and goals["table12"]["value"] == "layer plan: 1.45x eager, 1.49x compiled"
    assert goals["stats_kernel"]["met"] is True and goals["stats_kernel"]["value"].startswith("84% of copy")
    assert goals["compact_mlp"]["met"] is True and "1384 bfloat16 197 tokens: 1.00x eager" in goals["compact_mlp"]["value"]


@pytest.mark.parametrize("step", gpu_check.STEPS, ids=lambda s: s.name)
def test_every_step_has_a_command(step, tmp_path):
    cmd = gpu_check.command(step, "python3", tmp_path)
    assert cmd[0] == "python3"
