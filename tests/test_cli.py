"""The `vbp` command: the issue's DeiT-B example, the calibrate -> prune -> eval chain, and bad input."""

import json

import pytest
import torch
from conftest import assert_stats_close, run_torchrun

import vbp
from vbp.cli import main


def test_prune_deit_base_synthetic_gives_paper_numbers(tmp_path):
    summary = tmp_path / "out.json"
    assert (
        main(
            [
                "prune",
                "--model",
                "deit_base_patch16_224",
                "--data",
                "synthetic",
                "--num-batches",
                "2",
                "--batch-size",
                "4",
                "--ratio",
                "0.5",
                "--summary",
                str(summary),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    s = json.loads(summary.read_text())
    assert s["model"] == "deit_base_patch16_224" and s["ratio"] == 0.5
    # Paper Table 10, within 0.01 (the paper's own rounding of fvcore counts).
    assert abs(s["macs_g"] - 12.00) <= 0.01 and abs(s["params_m"] - 58.24) <= 0.01
    assert abs(s["macs_full_g"] - 17.58) <= 0.01 and abs(s["params_full_m"] - 86.57) <= 0.01
    assert len(s["widths"]) == 12 and sum(s["widths"].values()) == 12 * 3072 // 2


def test_calibrate_prune_eval_chain_on_digits(tmp_path, capsys):
    stats, out = tmp_path / "stats.safetensors", tmp_path / "pruned"
    assert main(["calibrate", "--stats", str(stats), "--batch-size", "256"]) == 0
    assert (
        main(
            [
                "prune",
                "--stats",
                str(stats),
                "--ratio",
                "0.3",
                "--scope",
                "layer",
                "--round-to",
                "8",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    widths = vbp.families.site_widths(vbp.load_pruned(out / "model.safetensors"))
    assert all(w % 8 == 0 for w in widths.values())
    assert vbp.Plan.load(out / "plan.json").kept_widths == widths
    capsys.readouterr()
    assert main(["eval", "--pruned", str(out / "model.safetensors"), "--batch-size", "128"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["top1"] > 90
    pruned = str(out / "model.safetensors")
    assert main(["eval", "--pruned", pruned, "--batch-size", "128", "--compact", "--latency-batch", "64"]) == 0
    compacted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert compacted["top1"] == result["top1"]  # CompactMlp computes the same function
    assert compacted["latency_ms"] > 0 and compacted["speedup"] == pytest.approx(
        compacted["reference_latency_ms"] / compacted["latency_ms"]
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["prune", "--ratio", "1.0"], "ratio must be in [0, 1)"),
        (["prune", "--ratio", "0.5", "--model", "deit_nonexistent"], "unknown model 'deit_nonexistent'"),
        (
            ["prune", "--ratio", "0.5", "--checkpoint", "/nonexistent/w.pth"],
            "checkpoint /nonexistent/w.pth does not exist",
        ),
        (["prune", "--ratio", "0.5", "--stats", "/nonexistent/s.safetensors"], "run `vbp calibrate"),
        (
            ["prune", "--ratio", "0.5", "--data", "/nonexistent/images"],
            "data /nonexistent/images does not exist",
        ),
        (["eval", "--data", "synthetic"], "no labels"),
        (["eval", "--latency-batch", "0"], "--latency-batch must be at least 1"),
    ],
)
def test_bad_input_is_a_clear_error(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_corrupt_checkpoint_and_unwritable_output(tmp_path, capsys):
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"garbage")
    assert main(["prune", "--ratio", "0.5", "--checkpoint", str(ckpt)]) == 2
    assert "cannot load checkpoint" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["prune", "--ratio", "0.5", "--summary", str(blocker / "s.json")]) == 2
    assert "cannot create the folder" in capsys.readouterr().err


def test_stats_of_another_model_are_refused(tmp_path, capsys):
    stats = tmp_path / "stats.safetensors"
    assert main(["calibrate", "--stats", str(stats), "--batch-size", "512", "--num-batches", "1"]) == 0
    assert (
        main(
            [
                "prune",
                "--model",
                "deit_tiny_patch16_224",
                "--data",
                "synthetic",
                "--ratio",
                "0.5",
                "--stats",
                str(stats),
            ]
        )
        == 2
    )
    assert "gathered on 'vbp_digits_vit'" in capsys.readouterr().err


def test_eval_reports_retention_of_a_pruned_model(capsys):
    assert main(["eval", "--ratio", "0.6", "--criterion", "random", "--no-compensation", "--batch-size", "256"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["retention_pct"] == pytest.approx(100 * result["top1"] / result["reference_top1"])
    assert result["reference_top1"] > 95 and result["top1"] < result["reference_top1"]


def test_calibrate_under_torchrun_equals_one_process(tmp_path):
    stats = str(tmp_path / "two.safetensors")
    done = run_torchrun(29541, "calibrate", "--batch-size", "100", "--backend", "torch", "--stats", stats)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["calibrate", "--batch-size", "100", "--stats", str(tmp_path / "one.safetensors")]) == 0
    two, one = vbp.Stats.load(tmp_path / "two.safetensors"), vbp.Stats.load(tmp_path / "one.safetensors")
    assert two.inputs == one.inputs == 1437
    # The ranks run other batch shapes on one thread each: their fp32 GEMMs round differently.
    assert_stats_close(two, one, torch.float32)
    assert not list(tmp_path.glob("*.partial*"))


def test_eval_under_torchrun_sums_the_ranks_counts(tmp_path, capsys):
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    stats = vbp.calibrate(model, vbp.workflows.data.loader(vbp.digits_split("train"), 512), progress=False)
    vbp.save_pruned(vbp.prune(model, vbp.select(stats, 0.6), stats), tmp_path / "pruned.safetensors")
    args = ["eval", "--pruned", str(tmp_path / "pruned.safetensors"), "--batch-size", "64"]
    done = run_torchrun(29543, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1  # rank 0 alone reports
    assert main(args) == 0
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    two = json.loads(printed[0])
    assert (two["top1"], two["top5"], two["reference_top1"]) == (one["top1"], one["top5"], one["reference_top1"])


def test_image_folder_and_checkpoint_loading_on_local_files(tmp_path, capsys):
    from PIL import Image
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(3):
            pixels = (torch.rand(40, 50, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    for name, classes in (("w.safetensors", 1000), ("w2.safetensors", 2)):
        weights = vbp.create_model("deit_tiny_patch16_224", num_classes=classes).state_dict()
        save_file({k: v.contiguous() for k, v in weights.items()}, tmp_path / name)
    common = ["--model", "deit_tiny_patch16_224", "--data", str(tmp_path / "images"), "--batch-size", "4"]
    assert (
        main(
            [
                "calibrate",
                *common,
                "--checkpoint",
                str(tmp_path / "w.safetensors"),
                "--stats",
                str(tmp_path / "s.safetensors"),
            ]
        )
        == 0
    )
    stats = vbp.Stats.load(tmp_path / "s.safetensors")
    assert stats.inputs == 6 and stats.sites["blocks.0.mlp"].count == 6 * 197  # resized to 224: 196 patches + cls
    assert (
        main(
            [
                "calibrate",
                *common,
                "--checkpoint",
                str(tmp_path / "w2.safetensors"),
                "--stats",
                str(tmp_path / "s2.safetensors"),
            ]
        )
        == 2
    )  # a 2-class checkpoint into a 1000-class model
    assert "cannot load checkpoint" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        main(
            [
                "calibrate",
                "--model",
                "deit_tiny_patch16_224",
                "--data",
                str(tmp_path / "empty"),
                "--stats",
                str(tmp_path / "s3.safetensors"),
            ]
        )
        == 2
    )
    assert "no images found" in capsys.readouterr().err
