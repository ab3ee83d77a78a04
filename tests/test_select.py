"""select(): global and per-layer ranking by variance, min_keep, round_to, plan files."""

import pytest
import torch

import vbp
from vbp.stats import Moments, Stats


def stats_with_variances(**variances) -> Stats:
    sites = {}
    for name, v in variances.items():
        v = torch.tensor(v, dtype=torch.float64)
        sites[name] = Moments(10, torch.zeros_like(v), v * 10)
    return Stats("toy", sites)


def test_global_prunes_lowest_variances_across_sites():
    s = stats_with_variances(a=[5, 1, 3, 0.5, 9, 8], b=[0.1, 4, 0.2, 6])
    plan = vbp.select(s, 0.5)  # 5 of 10 neurons: 0.1, 0.2, 0.5, 1, 3
    assert plan.keep == {"a": [0, 4, 5], "b": [1, 3]}
    assert plan.pruned("a").tolist() == [1, 2, 3]
    layer = vbp.select(s, 0.5, scope="layer")  # 3 of a, 2 of b
    assert layer.keep == {"a": [0, 4, 5], "b": [1, 3]}
    assert vbp.select(s, 0.6, scope="layer").keep == {"a": [4, 5], "b": [1, 3]}


def test_global_matches_a_brute_force_ranking():
    g = torch.Generator().manual_seed(0)
    variances = {f"s{i}": torch.rand(50 + 7 * i, generator=g).tolist() for i in range(5)}
    s = stats_with_variances(**variances)
    plan = vbp.select(s, 0.37)
    everything = sorted((v, name, j) for name, vs in variances.items() for j, v in enumerate(vs))
    n_prune = round(0.37 * len(everything))
    want_pruned = {(name, j) for _, name, j in everything[:n_prune]}
    got_pruned = {(name, j) for name in variances for j in plan.pruned(name).tolist()}
    assert got_pruned == want_pruned


def test_no_site_is_emptied_and_min_keep_holds():
    s = stats_with_variances(low=[1e-6] * 8, high=[1.0] * 8)
    plan = vbp.select(s, 0.5)  # 8 go: all but one of "low", then the first of "high"
    assert plan.kept_widths == {"low": 1, "high": 7} and plan.pruned_fraction == 0.5
    assert vbp.select(s, 0.5, min_keep=3).kept_widths == {"low": 3, "high": 5}
    with pytest.raises(vbp.VbpError, match="min_keep"):
        vbp.select(s, 0.75, min_keep=3)  # 12 to prune, only 10 unprotected


def test_round_to_gives_multiples():
    g = torch.Generator().manual_seed(1)
    s = stats_with_variances(a=torch.rand(64, generator=g).tolist(), b=torch.rand(96, generator=g).tolist())
    for ratio in (0.1, 0.33, 0.5, 0.9):
        plan = vbp.select(s, ratio, round_to=8)
        assert all(len(k) % 8 == 0 and len(k) >= 8 for k in plan.keep.values())
        assert abs(plan.pruned_fraction - ratio) <= 8 / 160 + 1e-9
        # the kept neurons of each site are still its highest-variance ones
        for name in ("a", "b"):
            v = s.variance(name)
            assert v[plan.kept(name)].min() >= v[plan.pruned(name)].max() if plan.pruned(name).numel() else True


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_range_is_an_error(ratio):
    with pytest.raises(vbp.VbpError, match=r"ratio must be in \[0, 1\)"):
        vbp.select(stats_with_variances(a=[1.0, 2.0]), ratio)


def test_ratio_zero_keeps_everything_and_plans_round_trip(tmp_path):
    s = stats_with_variances(a=[3, 1, 2], b=[1, 2])
    assert vbp.select(s, 0.0).keep == {"a": [0, 1, 2], "b": [0, 1]}
    plan = vbp.select(s, 0.4, scope="layer")
    plan.save(tmp_path / "plan.json")
    assert vbp.Plan.load(tmp_path / "plan.json") == plan
    (tmp_path / "bad.json").write_text(
        '{"format": "vbp-plan/1", "model": "x", "ratio": 0.1, "scope": "global", '
        '"widths": {"a": 3}, "keep": {"a": [5]}}'
    )
    with pytest.raises(vbp.VbpError, match="invalid set"):
        vbp.Plan.load(tmp_path / "bad.json")
