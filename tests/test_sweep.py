"""The sweep: MACs/params agree with vbp.count, methods parse, bad rate lists are refused; the CLI writes its files."""

import copy
import json

import pytest
from torch.utils.data import Subset

import vbp
from vbp.cli import main
from vbp.method import Method
from vbp.workflows.data import loader
from vbp.workflows.finetune import FinetuneConfig
from vbp.workflows.sweep import sweep, table_markdown


def test_sweep_rows_agree_with_count():
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    stats = vbp.calibrate(model, loader(vbp.digits_split("train"), 512), progress=False)
    val = Subset(vbp.digits_split("test"), range(100))
    methods = [Method.parse("variance+mean"), Method.parse("magnitude")]
    result = sweep(
        model,
        stats,
        [0.2, 0.6],
        methods,
        val,
        Subset(vbp.digits_split("train"), range(64)),
        FinetuneConfig(epochs=1, batch_size=32),
    )
    assert [(r["method"], r["rate"]) for r in result.rows] == [
        ("variance+mean", 0.2),
        ("variance+mean", 0.6),
        ("magnitude", 0.2),
        ("magnitude", 0.6),
    ]
    for row in result.rows:
        method = Method.parse(row["method"])
        plan = vbp.select(stats, row["rate"], criterion=method.criterion, model=model)
        macs, params = vbp.count(vbp.prune(copy.deepcopy(model), plan, stats, compensation=method.compensation))
        assert row["gmacs"] == macs / 1e9 and row["mparams"] == params / 1e6
        assert 0 <= row["final_top1"] <= 100 and row["retention_pct"] == 100 * row["retention_top1"] / result.base_top1
    assert len(result.histories[("magnitude", 0.6)]) == 1
    assert "| 60% |" in table_markdown(result, "digits")
    assert (result.base_gmacs, result.base_mparams) == tuple(v / s for v, s in zip(vbp.count(model), (1e9, 1e6)))


def test_methods_parse():
    assert Method.parse("random") == Method("random", "none")
    assert Method.parse("magnitude+comp") == Method("magnitude", "mean")  # the old name of mean-shift
    assert str(Method.parse("redundancy+affine")) == "redundancy+affine"
    assert Method.parse("redundancy").needs_covariance and not Method.parse("variance+mean").needs_covariance
    with pytest.raises(vbp.VbpError, match="unknown method"):
        Method.parse("variance+bias")


@pytest.mark.parametrize("rates", ["0.1,1.0", "-0.2", ""])
def test_rate_list_out_of_range_is_refused_before_anything_is_written(rates, tmp_path, capsys):
    assert main(["sweep", "--rates", rates, "--output", str(tmp_path / "s")]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").iterdir())


def test_sweep_command_writes_table_and_figures(tmp_path):
    assert (
        main(
            [
                "sweep",
                "--rates",
                "0.3,0.6",
                "--methods",
                "variance+mean,random",
                "--finetune-epochs",
                "1",
                "--samples",
                "256",
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "fig4_learning_curves.png",
        "fig5_retention.png",
        "fig6_layers.png",
        "fig7_pruned_activations.png",
        "fig8_retained_activations.png",
        "sweep.json",
        "table.csv",
        "table.md",
    ]
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert len(rows) == 4 and {"retention_top1", "final_top1", "gmacs_change"} <= set(rows[0])


def test_sweep_takes_a_single_criterion(tmp_path):
    assert (
        main(
            [
                "sweep",
                "--rates",
                "0.5",
                "--criterion",
                "magnitude",
                "--no-compensation",
                "--samples",
                "64",
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["magnitude"]


def test_sweep_takes_the_selection_options_prune_takes(tmp_path, capsys):
    """--scope, --min-keep, --round-to, --compensation and --ridge mean in sweep what they mean in prune."""
    out = tmp_path / "s"
    options = ["--rates", "0.5", "--num-batches", "1", "--batch-size", "512", "--samples", "16", "--output", str(out)]
    assert main(["sweep", *options, "--compensation", "affine", "--ridge", "0.1", "--scope", "layer",
                 "--round-to", "8", "--min-keep", "16"]) == 0
    row = json.loads((out / "sweep.json").read_text())["rows"][0]
    assert row["method"] == "variance+affine"
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    stats = vbp.calibrate(model, loader(vbp.digits_split("train"), 512), num_batches=1, covariance=True, progress=False)
    plan = vbp.select(stats, 0.5, scope="layer", round_to=8, min_keep=16)
    assert all(len(k) % 8 == 0 for k in plan.keep.values())
    pruned = vbp.prune(copy.deepcopy(model), plan, stats, compensation=vbp.Affine(ridge=0.1))
    assert row["gmacs"] == vbp.count(pruned)[0] / 1e9
    assert row["retention_top1"] == vbp.workflows.evaluate.accuracy(pruned, loader(vbp.digits_split("test"), 256))["top1"]
    assert main(["sweep", *options, "--methods", "variance+mean,random", "--ridge", "0.1"]) == 2
    assert "no method of --methods uses it" in capsys.readouterr().err
