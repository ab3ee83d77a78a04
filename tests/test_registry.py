"""Extension points: one Registry idiom, read at call time; a criterion and a compensation registered from
outside the package work in select, prune, the sweep and the CLI; typed configs (vbp.Affine(ridge=...)) agree
with the deprecated string + ridge= call and are saved as versioned dicts; older files still load."""

import contextlib
import copy
import json
from dataclasses import dataclass

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.layers import Mlp
from torch import nn
from torch.utils.data import Subset

import vbp
from vbp.activations import GELU_CLASSES, gelu_kind, qualified_name, register_gelu
from vbp.cli import main
from vbp.compensation import SiteFold
from vbp.fingerprint import weights_fingerprint
from vbp.method import Method, needs_covariance
from vbp.model_attributes import PRUNING
from vbp.registry import Registry
from vbp.workflows.data import loader
from vbp.workflows.evaluate import accuracy
from vbp.workflows.sweep import sweep


@dataclass(frozen=True)
class LowVarianceFirst(vbp.Criterion):
    """Keeps the neurons of lowest variance (VBP's order reversed), scaled by an option."""

    scale: float = 1.0

    def scores(self, stats, model, seed):
        return {name: -self.scale * stats.variance(name).cpu() for name in stats.sites}


@dataclass(frozen=True)
class PartMean(vbp.Compensation):
    """Each pruned value held at `fraction` of its mean: b2 += W2[:, P] @ (fraction * mu[P])."""

    fraction: float = 0.5
    needs = frozenset({"mean"})

    def fold(self, f: SiteFold):
        b2 = f.b2 if f.b2 is not None else f.w2.new_zeros(f.w2.shape[0])
        mean = f.stats.mean(f.site).to(f.w2)[f.pruned]
        return f.w2_kept, b2 + f.w2[:, f.pruned] @ (self.fraction * mean)


@contextlib.contextmanager
def outside_strategies():
    """"mine" and "partmean" registered as a user would, removed afterwards whatever happens."""
    vbp.CRITERIA.register("mine", LowVarianceFirst)
    try:
        vbp.COMPENSATIONS.register("partmean")(PartMean)  # the decorator form
        try:
            yield
        finally:
            vbp.COMPENSATIONS.unregister("partmean")
    finally:
        vbp.CRITERIA.unregister("mine")


def mlp_model(hidden=16):
    torch.manual_seed(0)
    return nn.Sequential(Mlp(6, hidden, out_features=5)).double().eval()


def mlp_stats(model, covariance=False):
    g = torch.Generator().manual_seed(1)
    return vbp.calibrate(model, [torch.randn(300, 6, generator=g, dtype=torch.float64)], covariance=covariance,
                         progress=False)


def test_registry_reads_its_entries_when_used():
    kinds = Registry("colour")
    kinds.register("red", 1)

    @kinds.register("blue")
    def blue():
        return 2

    assert kinds.names() == ("red", "blue") and list(kinds) == ["red", "blue"] and len(kinds) == 2
    assert "blue" in kinds and kinds.get("blue") is blue and kinds.name_of(blue) == "blue"
    kinds.register("red", 1)  # the same entry again is a no-op
    with pytest.raises(vbp.VbpError, match="'red' is already registered"):
        kinds.register("red", 3)
    assert kinds.unregister("red") == 1 and kinds.names() == ("blue",)
    with pytest.raises(vbp.VbpError, match="unknown colour 'red'; choose one of blue$"):
        kinds.get("red")


def test_unknown_names_list_the_known_ones():
    model = mlp_model()
    stats = mlp_stats(model)
    with pytest.raises(vbp.VbpError, match="unknown criterion 'nope'; choose one of variance, weighted_variance, "
                                           "redundancy, magnitude, random$"):
        vbp.select(stats, 0.5, criterion="nope")
    with pytest.raises(vbp.VbpError, match="unknown compensation 'median'; choose one of none, mean, affine$"):
        vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.5), stats, compensation="median")
    with pytest.raises(vbp.VbpError, match="a compensation from none, mean, affine"):
        Method.parse("variance+median")
    with outside_strategies():  # the lists are read when the error is made
        with pytest.raises(vbp.VbpError, match="choose one of variance, .*, random, mine$"):
            vbp.select(stats, 0.5, criterion="nope")
        with pytest.raises(vbp.VbpError, match="a Compensation config or its dict; got Variance()"):
            vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.5), stats, compensation=vbp.Variance())
    with pytest.raises(vbp.VbpError, match="PartMean is not a registered compensation"):
        PartMean().to_dict()
    with pytest.raises(vbp.VbpError, match="GELU kind is one of gelu, gelu_tanh"):
        register_gelu(nn.ReLU, "relu")


def test_outside_criterion_and_compensation_in_select_and_prune():
    model = mlp_model()
    stats = mlp_stats(model)
    variance = stats.variance("0")
    with outside_strategies():
        plan = vbp.select(stats, 0.5, criterion="mine")
        assert plan.keep["0"] == sorted(torch.argsort(variance)[:8].tolist())  # the lowest-variance half
        assert plan.criterion == {"name": "mine", "version": 1, "scale": 1.0}
        assert vbp.select(stats, 0.5, criterion=LowVarianceFirst(scale=3.0)).keep == plan.keep
        pruned = vbp.prune(copy.deepcopy(model), plan, stats, compensation="partmean")
        fc2 = model[0].fc2
        pruned_idx = plan.pruned("0")
        want = fc2.bias + fc2.weight[:, pruned_idx] @ (0.5 * stats.mean("0")[pruned_idx])
        torch.testing.assert_close(pruned[0].fc2.bias, want, rtol=1e-14, atol=1e-14)
        # a fold is linear in the value held: half the mean is halfway between no compensation and the mean
        halves = [vbp.prune(copy.deepcopy(model), plan, stats, compensation=c)[0].fc2.bias for c in ("none", "mean")]
        torch.testing.assert_close(pruned[0].fc2.bias, sum(halves) / 2, rtol=1e-14, atol=1e-14)
        assert pruned.__dict__[PRUNING]["compensation"] == {"name": "partmean", "version": 1, "fraction": 0.5}
        assert not needs_covariance("mine", "partmean") and needs_covariance("mine", vbp.Affine())
        with pytest.raises(vbp.VbpError, match="partmean compensation needs the statistics"):
            vbp.prune(copy.deepcopy(model), plan, compensation=PartMean(0.25))


def test_outside_strategies_in_the_sweep():
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    stats = vbp.calibrate(model, loader(vbp.digits_split("train"), 256), num_batches=1, progress=False)
    val = Subset(vbp.digits_split("test"), range(128))
    with outside_strategies():
        method = Method.parse("mine+partmean")
        assert method == Method("mine", "partmean") and str(method) == "mine+partmean"
        assert not method.needs_covariance
        result = sweep(model, stats, [0.5], [method, Method.parse("mine")], val)
        pruned = vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.5, criterion=LowVarianceFirst()), stats,
                           compensation=PartMean())
    assert [r["method"] for r in result.rows] == ["mine+partmean", "mine"]
    assert result.rows[0]["retention_top1"] == accuracy(pruned, loader(val, 256), progress=False)["top1"]
    assert result.plans[("mine", 0.5)].keep == result.plans[("mine+partmean", 0.5)].keep
    with pytest.raises(vbp.VbpError, match="unknown method 'mine\\+partmean'"):
        Method.parse("mine+partmean")  # gone once unregistered


def test_outside_strategies_in_the_cli(tmp_path, capsys):
    out = tmp_path / "pruned"
    args = ["prune", "--ratio", "0.5", "--num-batches", "1", "--batch-size", "64", "--output", str(out)]
    with outside_strategies():
        assert main([*args, "--criterion", "mine", "--compensation", "partmean"]) == 0
    # saved files name the outside strategies and still load without them
    loaded = vbp.load_pruned(out / "model.safetensors")
    assert {k: v for k, v in loaded.__dict__[PRUNING].items() if k != "weights"} == {
        "criterion": {"name": "mine", "version": 1, "scale": 1.0},
        "compensation": {"name": "partmean", "version": 1, "fraction": 0.5},
        "ratio": 0.5,
    }
    assert vbp.Plan.load(out / "plan.json").criterion == {"name": "mine", "version": 1, "scale": 1.0}
    with pytest.raises(SystemExit):  # the CLI's choices are the registry's at the time
        main([*args, "--criterion", "mine"])
    assert "invalid choice: 'mine'" in capsys.readouterr().err


def test_affine_config_gives_the_weights_of_the_deprecated_ridge_call():
    model = mlp_model()
    stats = mlp_stats(model, covariance=True)
    plan = vbp.select(stats, 0.5)
    config = vbp.prune(copy.deepcopy(model), plan, stats, compensation=vbp.Affine(ridge=0.3))
    with pytest.warns(DeprecationWarning, match="pass compensation=vbp.Affine") as warned:
        old = vbp.prune(copy.deepcopy(model), plan, stats, compensation="affine", ridge=0.3)
    assert warned[0].filename == __file__  # the warning points at the caller
    for key, value in config.state_dict().items():
        assert torch.equal(value, old.state_dict()[key]), key
    # against a ridge solve written out here: W2_K + W2_P S_PK (S_KK + lam I)^-1, lam = 0.3 * mean var_K
    keep, pruned = plan.kept("0"), plan.pruned("0")
    cov, w2 = stats.covariance("0"), model[0].fc2.weight.detach()
    s_kk = cov[keep][:, keep]
    a = torch.linalg.solve(s_kk + 0.3 * s_kk.diagonal().mean() * torch.eye(len(keep), dtype=cov.dtype),
                           cov[keep][:, pruned]).T
    torch.testing.assert_close(config[0].fc2.weight, w2[:, keep] + w2[:, pruned] @ a, rtol=1e-12, atol=1e-12)
    default = vbp.prune(copy.deepcopy(model), plan, stats, compensation="affine")
    assert not torch.equal(default[0].fc2.weight, config[0].fc2.weight)  # the ridge is really used
    with pytest.warns(DeprecationWarning, match="compensate"):
        none = vbp.prune(copy.deepcopy(model), plan, stats, compensate=False)
    assert torch.equal(none[0].fc2.weight, model[0].fc2.weight[:, keep])
    with pytest.warns(DeprecationWarning), pytest.raises(vbp.VbpError, match="ridge= applies to affine"):
        vbp.prune(copy.deepcopy(model), plan, stats, ridge=0.3)


def test_configs_round_trip_through_their_dicts():
    for config in (vbp.Affine(ridge=0.2), vbp.Mean(), vbp.NoCompensation()):
        assert vbp.Compensation.resolve(config.to_dict()) == config
        assert vbp.Compensation.resolve(json.loads(json.dumps(config.to_dict()))) == config
    for config in (vbp.Redundancy(ridge=0.2), vbp.Variance(), vbp.WeightedVariance(), vbp.Magnitude(), vbp.Random()):
        assert vbp.Criterion.resolve(config.to_dict()) == config
    assert vbp.Compensation.resolve("affine") == vbp.Affine() == vbp.Affine(ridge=1e-2)
    assert vbp.Compensation.resolve({"name": "affine", "version": 1}) == vbp.Affine()  # options left out: defaults
    with pytest.raises(vbp.VbpError, match="version 2 is not this vbp's version 1"):
        vbp.Compensation.resolve({"name": "affine", "version": 2, "ridge": 0.1})
    with pytest.raises(vbp.VbpError, match="'mean' does not take these options"):
        vbp.Compensation.resolve({"name": "mean", "version": 1, "ridge": 0.1})
    with pytest.raises(vbp.VbpError, match="ridge must be"):
        vbp.Redundancy(ridge=-1)


def test_saved_model_records_versioned_dicts_and_older_files_load(tmp_path):
    model = vbp.create_model("deit_tiny_patch16_224", img_size=32)
    g = torch.Generator().manual_seed(0)
    stats = vbp.calibrate(model, [torch.randn(4, 3, 32, 32, generator=g)], covariance=True, progress=False)
    plan = vbp.select(stats, 0.3, criterion=vbp.Redundancy(ridge=0.1), model=model)
    pruned = vbp.prune(copy.deepcopy(model), plan, stats, compensation=vbp.Affine(ridge=0.05))
    path = tmp_path / "m.safetensors"
    vbp.save_pruned(pruned, path)
    with safe_open(path, framework="pt") as f:
        meta = json.loads(f.metadata()["vbp"])
    want = {
        "criterion": {"name": "redundancy", "version": 1, "ridge": 0.1},
        "compensation": {"name": "affine", "version": 1, "ridge": 0.05},
        "ratio": 0.3,
        "weights": weights_fingerprint(model),  # of the unpruned model
    }
    assert meta["pruning"] == want
    record = vbp.load_pruned(path).__dict__[PRUNING]
    assert record == want and vbp.Compensation.resolve(record["compensation"]) == vbp.Affine(ridge=0.05)

    # the same model as vbp wrote it before typed configs: names, and affine's ridge beside them
    x = torch.randn(2, 3, 32, 32, generator=g)
    for old, upgraded in (
        ({"criterion": "variance", "compensation": "affine", "ratio": 0.3, "ridge": 0.05},
         {"criterion": {"name": "variance", "version": 1},
          "compensation": {"name": "affine", "version": 1, "ridge": 0.05}, "ratio": 0.3}),
        ({"criterion": "random", "compensation": "mean", "ratio": 0.3},
         {"criterion": {"name": "random", "version": 1}, "compensation": {"name": "mean", "version": 1}, "ratio": 0.3}),
    ):
        save_file(load_file(path), tmp_path / "old.safetensors", metadata={"vbp": json.dumps({**meta, "pruning": old})})
        loaded = vbp.load_pruned(tmp_path / "old.safetensors")
        assert loaded.__dict__[PRUNING] == upgraded
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), pruned(x), rtol=0, atol=0)


def test_gelu_classes_are_registered_and_read_when_used():
    class MyGelu(nn.Module):
        def forward(self, x):
            return nn.functional.gelu(x, approximate="tanh")

    assert gelu_kind(MyGelu()) is None
    register_gelu(MyGelu, "gelu_tanh")
    try:
        assert gelu_kind(MyGelu()) == "gelu_tanh" and qualified_name(MyGelu) in GELU_CLASSES
    finally:
        GELU_CLASSES.unregister(qualified_name(MyGelu))
    assert gelu_kind(MyGelu()) is None and gelu_kind(nn.GELU()) == "gelu"
