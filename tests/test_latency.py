"""Latency tables and selection to a speed target: the knapsack against brute force, the monotone envelope,
table files and keys, targets that cannot be met, slow widths never chosen, a tiny real profile, and the CLI.
Nothing here asserts on a measured time: selection tests use synthetic tables."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from test_select import stats_with_variances

import vbp
from vbp.cli import main
from vbp.families import site_widths
from vbp.latency import LatencyTable, MlpShape, WidthCurve, knapsack, profile, table_key
from vbp.latency.knapsack import STEPS_PER_SITE
from vbp.latency.profile import mlp_shapes, refine_widths, width_grid, without_mlps


def brute_force(values, costs, budget):
    """The best summed value (None when nothing fits) over every choice of one candidate per group."""
    best = None
    for choice in itertools.product(*(range(len(v)) for v in values)):
        if sum(costs[g][c] for g, c in enumerate(choice)) <= budget + 1e-9:
            value = sum(values[g][c] for g, c in enumerate(choice))
            best = value if best is None else max(best, value)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_knapsack_is_exact_on_whole_unit_costs(seed):
    rng = np.random.default_rng(seed)
    groups = rng.integers(1, 5)
    values = [rng.random(rng.integers(1, 5)) * 10 for _ in range(groups)]
    costs = [rng.integers(1, 15, len(v)).astype(float) for v in values]
    budget = int(rng.integers(1, 40))
    picked = knapsack(values, costs, budget, budget)  # one unit per millisecond: no rounding
    want = brute_force(values, costs, budget)
    if want is None:
        assert picked is None
    else:
        assert sum(costs[g][c] for g, c in enumerate(picked)) <= budget
        assert sum(values[g][c] for g, c in enumerate(picked)) == pytest.approx(want)


@pytest.mark.parametrize("seed", range(20))
def test_knapsack_rounding_never_breaks_the_budget_and_loses_at_most_one_unit_per_group(seed):
    rng = np.random.default_rng(100 + seed)
    groups, steps = 4, 50
    values = [rng.random(5) for _ in range(groups)]
    costs = [rng.random(5) * 3 for _ in range(groups)]
    budget = float(rng.uniform(2, 8))
    picked = knapsack(values, costs, budget, steps)
    best = brute_force(values, costs, budget)
    if picked is None:
        assert brute_force(values, costs, budget - groups * budget / steps) is None
        return
    got = sum(values[g][c] for g, c in enumerate(picked))
    assert sum(costs[g][c] for g, c in enumerate(picked)) <= budget + 1e-9 and got <= best + 1e-12
    assert got >= (brute_force(values, costs, budget - groups * budget / steps) or 0) - 1e-12


def test_envelope_is_the_suffix_minimum_and_interpolates_between_widths():
    rng = np.random.default_rng(0)
    widths = list(range(8, 136, 8))
    ms = (np.arange(len(widths)) + rng.normal(0, 3, len(widths)) + 5).clip(0.1).tolist()
    curve = WidthCurve(widths, ms)
    env = curve.envelope
    assert env == [min(ms[i:]) for i in range(len(ms))]
    assert all(a <= b for a, b in zip(env, env[1:])) and all(e <= m for e, m in zip(env, ms))
    assert curve.at(12) == pytest.approx((env[0] + env[1]) / 2) and curve.at(128) == pytest.approx(env[-1])
    assert [w for w, _ in curve.candidates()] == [w for w, m, e in zip(widths, ms, env) if m == e]


def test_width_grid_is_coarse_multiples_of_8_and_refines_a_step():
    grid = width_grid(3072)
    assert grid[-1] == 3072 and all(w % 8 == 0 for w in grid) and 20 <= len(grid) <= 30
    assert width_grid(1000)[-2:] == [992, 1000] and width_grid(40) == [8, 16, 24, 32, 40]
    coarse = list(range(64, 1537, 64))
    ms = [0.01 * w + (5.0 if w >= 768 else 0.0) for w in coarse]  # a step between 704 and 768
    extra = refine_widths(coarse, ms)
    assert extra and all(704 < w < 768 and w % 8 == 0 for w in extra)
    assert refine_widths(coarse, [0.01 * w for w in coarse]) == []  # a straight line has no step


def toy_shape(hidden: int) -> MlpShape:
    return MlpShape(4, hidden, 4, (2, 3, 4), False, "Linear", "GELU", True, True)


def toy_table(curves: dict[str, tuple[list[int], list[float]]], fixed_ms: float = 2.0) -> LatencyTable:
    """A table with one shape per site, the given (widths, ms) curves, and `fixed_ms` for the rest."""
    shapes = [toy_shape(w[-1]) for w, _ in curves.values()]
    table = LatencyTable(
        {"model": "toy"}, shapes, [WidthCurve(*c) for c in curves.values()], {n: i for i, n in enumerate(curves)},
        0.0, fixed_ms,
    )
    table.full_ms = table.predict_ms(table.widths)
    return table


def random_case(seed: int, sites: int = 3, width: int = 48):
    g = torch.Generator().manual_seed(seed)
    variances = {f"s{i}": torch.rand(width, generator=g, dtype=torch.float64).pow(3).tolist() for i in range(sites)}
    widths = list(range(8, width + 1, 8))
    curves = {n: (widths, [0.5 * w * (1 + i) / width + 0.3 * float(torch.rand(1, generator=g)) for w in widths])
              for i, n in enumerate(variances)}
    return stats_with_variances(**variances), toy_table(curves)


def kept_score(stats, plan) -> float:
    return sum(float(stats.sites[n].variance[plan.kept(n)].sum()) for n in plan.keep)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("target", [1.2, 1.6])
def test_select_to_a_speedup_keeps_the_most_variance_that_fits(seed, target):
    stats, table = random_case(seed)
    plan = vbp.select(stats, target_speedup=target, latency=table)
    assert plan.scope == "latency" and plan.target["target_speedup"] == target
    assert table.predict_speedup(plan.kept_widths) >= target - 1e-9
    assert plan.target["predicted_speedup"] == pytest.approx(table.predict_speedup(plan.kept_widths))
    names = list(table.sites)
    options = [table.curves[table.sites[n]].candidates() for n in names]
    prefix = {n: np.cumsum(sorted(stats.sites[n].variance.tolist(), reverse=True)) for n in names}
    values = [[prefix[n][w - 1] for w, _ in opts] for n, opts in zip(names, options)]
    costs = [[ms for _, ms in opts] for opts in options]
    room = table.full_ms / target - table.fixed_ms
    unit = room / (STEPS_PER_SITE * len(names))
    assert kept_score(stats, plan) <= brute_force(values, costs, room) + 1e-9
    assert kept_score(stats, plan) >= brute_force(values, costs, room - len(names) * unit) - 1e-9
    for n in names:  # each site keeps a prefix of its ranking: its highest variances
        v = stats.sites[n].variance
        assert plan.pruned(n).numel() == 0 or v[plan.kept(n)].min() >= v[plan.pruned(n)].max()


@pytest.mark.parametrize("seed", range(4))
def test_uniform_target_is_the_best_single_width_that_fits(seed):
    stats, table = random_case(seed)
    plan = vbp.select(stats, target_speedup=1.3, latency=table, scope="uniform")
    assert plan.scope == "uniform" and len(set(plan.kept_widths.values())) == 1
    budget = table.full_ms / 1.3
    sizes = sorted({w for c in table.curves for w, _ in c.candidates() if w > 0})
    fits = [u for u in sizes if table.predict_ms({n: u for n in table.sites}) <= budget]
    best = max(fits, key=lambda u: sum(float(stats.sites[n].variance.sort(descending=True).values[:u].sum())
                                       for n in table.sites))
    assert kept_score(stats, plan) == pytest.approx(
        sum(float(stats.sites[n].variance.sort(descending=True).values[:best].sum()) for n in table.sites))


def test_a_deliberately_slow_width_is_never_chosen():
    stats, _ = random_case(0)
    widths = list(range(8, 49, 8))
    fast = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    slow = [1.0, 2.0, 9.0, 4.0, 5.0, 6.0]  # 24 costs more than 32
    table = toy_table({"s0": (widths, slow), "s1": (widths, fast), "s2": (widths, slow)})
    for target in np.linspace(1.05, 2.0, 30):
        plan = vbp.select(stats, target_speedup=float(target), latency=table)
        assert plan.kept_widths["s0"] != 24 and plan.kept_widths["s2"] != 24
    assert 24 in {vbp.select(stats, target_speedup=float(t), latency=table).kept_widths["s1"]
                  for t in np.linspace(1.05, 2.0, 30)}


def test_min_keep_round_to_and_other_criteria_are_honoured():
    stats, table = random_case(3)
    plan = vbp.select(stats, target_speedup=1.1, latency=table, min_keep=20, round_to=16)
    assert all(w >= 20 and (w % 16 == 0 or w == 48) for w in plan.kept_widths.values())
    plan = vbp.select(stats, target_speedup=1.3, latency=table, criterion="random")
    assert plan.criterion["name"] == "random" and table.predict_speedup(plan.kept_widths) >= 1.3


def test_targets_that_cannot_be_met_say_the_best_reachable_speedup():
    stats, table = random_case(1)
    floor = table.fixed_ms + sum(min(c.envelope) for c in table.curves)
    best = table.full_ms / floor
    with pytest.raises(vbp.VbpError, match=f"{best:.2f}x speed-up at best"):
        vbp.select(stats, target_speedup=best * 1.01, latency=table)
    vbp.select(stats, target_speedup=best * 0.99, latency=table)
    for bad in (1.0, 0.5, -2, float("nan"), "2", True):
        with pytest.raises(vbp.VbpError, match="above 1"):
            vbp.select(stats, target_speedup=bad, latency=table)
    with pytest.raises(vbp.VbpError, match="either ratio or a latency target"):
        vbp.select(stats, 0.5, target_speedup=1.5, latency=table)
    with pytest.raises(vbp.VbpError, match="needs latency="):
        vbp.select(stats, target_speedup=1.5)
    with pytest.raises(vbp.VbpError, match="other MLP sites"):
        vbp.select(stats_with_variances(s0=[1.0] * 48), target_speedup=1.5, latency=table)


def test_latency_budget_in_milliseconds():
    stats, table = random_case(2)
    plan = vbp.select(stats, latency_budget_ms=0.8 * table.full_ms, latency=table)
    assert table.predict_ms(plan.kept_widths) <= 0.8 * table.full_ms + 1e-9


def test_table_files_round_trip_and_refuse_bad_ones(tmp_path):
    _, table = random_case(4)
    path = tmp_path / "t.json"
    table.save(path)
    loaded = LatencyTable.load(path)
    assert loaded == table
    path.write_text(json.dumps({"format": "vbp-latency/1", "key": {}}))
    with pytest.raises(vbp.VbpError, match="malformed"):
        LatencyTable.load(path)
    with pytest.raises(vbp.VbpError, match="does not exist"):
        LatencyTable.load(tmp_path / "none.json")
    table.curves[0].ms[0] = -1.0
    table.save(path)
    with pytest.raises(vbp.VbpError, match="negative"):
        LatencyTable.load(path)


def test_plan_records_its_target_and_round_trips(tmp_path):
    stats, table = random_case(5)
    plan = vbp.select(stats, target_speedup=1.4, latency=table)
    plan.save(tmp_path / "plan.json")
    assert vbp.Plan.load(tmp_path / "plan.json") == plan


def test_a_tiny_real_profile_has_the_shapes_and_grid_of_the_model(tmp_path, deit_tiny_small):
    table = profile(deit_tiny_small, batch=32, rounds=3, progress=False, max_spread=math.inf)
    assert len(table.shapes) == 1 and set(table.sites) == set(vbp.find_sites(deit_tiny_small)[i].name for i in range(12))
    shape, curve = table.shapes[0], table.curves[0]
    assert (shape.in_features, shape.hidden, shape.tokens, shape.gated) == (192, 768, 32 * 5, False)
    assert curve.widths[-1] == 768 and set(width_grid(768)) <= set(curve.widths)
    assert table.fixed_ms > 0 and table.key == table_key(deit_tiny_small, 32, "eager")
    assert table.environment["rounds"] == 3 and table.key["threads"] == torch.get_num_threads()
    # the fixed cost is the model with every MLP at width 0, predicted exactly, as is the full model
    bare = without_mlps(deit_tiny_small)
    assert set(site_widths(bare).values()) == {0} and set(site_widths(deit_tiny_small).values()) == {768}
    assert table.predict_ms({n: 0 for n in table.sites}) == pytest.approx(table.fixed_ms)
    assert table.predict_ms(table.widths) == pytest.approx(table.full_ms)
    with torch.inference_mode():
        assert bare(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_gated_mlp_shapes(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=1000, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=2,
        vocab_size=64,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    shapes, sites, _ = mlp_shapes(model, 3)
    assert len(shapes) == 1 and len(sites) == 2
    assert shapes[0].gated and not shapes[0].compact and shapes[0].tokens == 3 * 128
    table = profile(model, batch=2, rounds=3, progress=False, max_spread=math.inf)
    widths = table.curves[0].widths
    assert widths[:2] == [0, 48] and widths[-2:] == [992, 1000] and set(width_grid(1000)) <= set(widths)


def digits_table(tmp_path, batch: int = 2) -> str:
    """A synthetic table keyed for the embedded digits ViT at `batch`, written to tmp_path."""
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    shapes, sites, _ = mlp_shapes(model, batch)
    widths = list(range(8, shapes[0].hidden + 1, 8))
    table = LatencyTable(table_key(model, batch, "eager", shapes, sites), shapes,
                         [WidthCurve(widths, [0.01 * w for w in widths])], sites, 0.0, 2.0)
    table.full_ms = table.predict_ms(table.widths)
    path = tmp_path / "table.json"
    table.save(path)
    return str(path)


def test_cli_prune_to_a_target_speedup_reports_prediction_and_measurement(tmp_path, capsys):
    table = digits_table(tmp_path)
    summary = tmp_path / "s.json"
    args = ["prune", "--target-speedup", "1.3", "--latency-table", table, "--num-batches", "2", "--device", "cpu"]
    assert main([*args, "--latency-batch", "2", "--summary", str(summary), "--output", str(tmp_path / "o")]) == 0
    s = json.loads(summary.read_text())["latency"]
    assert s["target_speedup"] == 1.3 and s["predicted_speedup"] >= 1.3 and s["measured_speedup"] > 0
    assert "predicted" in capsys.readouterr().out
    plan = vbp.Plan.load(tmp_path / "o" / "plan.json")
    assert plan.target["target_speedup"] == 1.3
    assert main([*args, "--latency-batch", "4"]) == 2  # the table was measured at batch 2
    assert "batch: table 2, here 4" in capsys.readouterr().err
    assert main(["prune", "--target-speedup", "1.0", "--latency-table", table]) == 2
    assert main(["prune", "--target-speedup", "1.3", "--ratio", "0.5", "--latency-table", table]) == 2
    assert main(["prune", "--target-speedup", "1.3"]) == 2  # neither a table nor a batch to measure one at
    assert main(["prune", "--target-speedup", "1.3", "--latency-table", table, "--scope", "layer"]) == 2
    assert "applies to --ratio" in capsys.readouterr().err


def test_cli_profile_writes_a_table_prune_reuses(tmp_path, capsys):
    out = tmp_path / "t.json"
    args = ["--latency-batch", "2", "--rounds", "1", "--output", str(out), "--device", "cpu", "--runtime", "compact",
            "--max-spread", "inf"]
    assert main(["profile", *args]) == 0
    table = LatencyTable.load(out)
    assert table.key["batch"] == 2 and table.key["runtime"] == "compact" and table.key["model"] == "vbp_digits_vit"
    assert table.shapes[0].compact and table.curves[0].widths[-1] == 128
    best = table.full_ms / (table.fixed_ms + table.curves[0].envelope[1] * len(table.sites))  # narrowest: 8
    # the table's runtime and batch are prune's defaults; a target beyond its reach says how far it goes
    assert main(["prune", "--latency-table", str(out), "--target-speedup", str(best * 1.05), "--num-batches", "1"]) == 2
    assert f"{best:.2f}x speed-up at best" in capsys.readouterr().err
    assert main(["prune", "--latency-table", str(out), "--ratio", "0.5", "--num-batches", "1", "--summary",
                 str(tmp_path / "s.json")]) == 0
    latency = json.loads((tmp_path / "s.json").read_text())["latency"]
    assert latency["runtime"] == "compact" and latency["batch"] == 2 and "measured_speedup" not in latency
    assert latency["predicted_speedup"] == pytest.approx(table.predict_speedup(
        json.loads((tmp_path / "s.json").read_text())["widths"]))
