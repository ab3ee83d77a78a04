"""save_pruned / load_pruned round trips, and files are written atomically."""

import copy

import pytest
import torch
from conftest import random_batches, small_model
from safetensors import safe_open

import vbp
from vbp.files import atomic_path


@pytest.mark.parametrize(
    "name,kwargs,input_size",
    [
        ("deit_tiny_patch16_224", dict(img_size=32, num_classes=7), (3, 32, 32)),
        ("convnext_atto", dict(conv_mlp=True), (3, 64, 64)),
    ],
)
def test_round_trip_gives_identical_outputs(tmp_path, name, kwargs, input_size):
    model = small_model(name, **kwargs)
    stats = vbp.calibrate(model, random_batches(1, 2, input_size), progress=False)
    pruned = vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.4), stats)
    path = tmp_path / "m.safetensors"
    vbp.save_pruned(pruned, path)
    with safe_open(path, framework="pt") as f:  # plain safetensors: nothing to unpickle
        assert "vbp" in f.metadata()
    loaded = vbp.load_pruned(path)
    x = random_batches(1, 3, input_size, seed=5)[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x), rtol=0, atol=0)
    assert vbp.families.site_widths(loaded) == vbp.families.site_widths(pruned)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(vbp.VbpError, match="does not exist"):
        vbp.load_pruned(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(vbp.VbpError, match="not a readable"):
        vbp.load_pruned(bad)


def test_save_needs_a_rebuildable_model(tmp_path):
    model = small_model("deit_tiny_patch16_224", img_size=32)
    with pytest.raises(vbp.VbpError, match="does not rebuild"):
        vbp.save_pruned(model, tmp_path / "m.safetensors", kwargs={})  # the 32x32 position embedding is lost
    assert not list(tmp_path.iterdir())


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("the user's file")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "the user's file"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_unwritable_output_is_reported(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(vbp.VbpError, match="cannot create the folder"):
        vbp.save_pruned(small_model("deit_tiny_patch16_224", img_size=32), blocker / "sub" / "m.safetensors")
