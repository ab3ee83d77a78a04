"""Moments and Stats against a float64 two-pass reference."""

import pytest
import torch

import vbp
from vbp import chan
from vbp.stats import Moments, Stats


def two_pass(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    mean = x.sum(0) / x.shape[0]
    return mean, ((x - mean) ** 2).sum(0) / x.shape[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 5), (1000, 37), (3, 1)])
def test_moments_match_two_pass(dtype, shape):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3 + 2).to(dtype)
    m = Moments.of(x)
    mean, var = two_pass(x)
    assert m.count == shape[0]
    torch.testing.assert_close(m.mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.variance, var, rtol=1e-10, atol=1e-12)


def test_large_mean_tiny_variance_where_naive_formula_fails():
    g = torch.Generator().manual_seed(0)
    x = 1e4 + 1e-2 * torch.randn(20000, 8, generator=g, dtype=torch.float64)
    _, var = two_pass(x)
    ours = Moments.of(x).variance
    naive = (x * x).mean(0) - x.mean(0) ** 2
    assert ((ours - var).abs() / var).max() < 1e-9
    assert ((naive - var).abs() / var).max() > 1e-7  # the formula vbp must never use is visibly wrong here
    x32 = x.float()  # the same on float32 activations
    torch.testing.assert_close(Moments.of(x32).variance, two_pass(x32)[1], rtol=1e-9, atol=0)


def test_merge_of_split_batches_equals_whole(monkeypatch):
    monkeypatch.setattr(chan, "CHUNK_ELEMENTS", 64)  # also exercises chunking inside one batch
    x = torch.randn(1001, 13, generator=torch.Generator().manual_seed(2)) + 50
    acc = Moments.zeros(13)
    for part in x.split([1, 500, 7, 493]):
        acc = acc.merge(Moments.of(part))
    mean, var = two_pass(x)
    assert acc.count == 1001
    torch.testing.assert_close(acc.mean, mean, rtol=1e-13, atol=0)
    torch.testing.assert_close(acc.variance, var, rtol=1e-10, atol=0)


def test_merge_rejects_other_width():
    with pytest.raises(vbp.VbpError, match="merge"):
        Moments.zeros(3).merge(Moments.zeros(4))


def test_stats_save_load_round_trip(tmp_path):
    s = Stats("m", {"a": Moments.of(torch.randn(10, 4)), "b": Moments.of(torch.randn(7, 2))})
    s.save(tmp_path / "s.safetensors")
    t = Stats.load(tmp_path / "s.safetensors")
    assert t.model == "m" and t.widths == {"a": 4, "b": 2}
    assert t.sites["b"].count == 7
    torch.testing.assert_close(t.variance("a"), s.variance("a"), rtol=0, atol=0)


def test_stats_load_rejects_corrupt_and_foreign_files(tmp_path):
    s = Stats("m", {"a": Moments.of(torch.randn(10, 4))})
    path = tmp_path / "s.safetensors"
    s.save(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(vbp.VbpError, match="not a readable"):
        Stats.load(path)
    with pytest.raises(vbp.VbpError, match="does not exist"):
        Stats.load(tmp_path / "missing.safetensors")
    plan_path = tmp_path / "plan.json"
    vbp.select(s, 0.5).save(plan_path)
    with pytest.raises(vbp.VbpError):
        Stats.load(plan_path)


def test_check_matches_names_the_problem():
    s = Stats("deit_tiny", {"a": Moments.zeros(4)})
    with pytest.raises(vbp.VbpError, match="gathered on 'deit_tiny'"):
        s.check_matches("deit_small", {"a": 4})
    with pytest.raises(vbp.VbpError, match="widths differ"):
        s.check_matches("deit_tiny", {"a": 5})
