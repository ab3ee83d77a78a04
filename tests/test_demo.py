"""The embedded default: committed weights are really trained, and the demo's job holds together."""

from vbp.families.embedded import ARCHITECTURE
from vbp.workflows.demo import run_demo


def test_demo_prunes_half_and_reloads(tmp_path):
    r = run_demo(ratio=0.5, output=tmp_path)
    assert r["acc_full"] >= 95  # the committed digits ViT is trained, not random (random is ~10%)
    assert r["acc_pruned"] >= 0.9 * r["acc_full"]
    hidden = ARCHITECTURE["depth"] * int(ARCHITECTURE["embed_dim"] * ARCHITECTURE["mlp_ratio"])
    assert sum(r["widths"].values()) == hidden // 2
    assert r["macs_g"] < r["macs_full_g"] and r["params_m"] < r["params_full_m"]
    assert r["compact_max_abs_diff"] < 1e-4  # vbp.compact changes how the MLPs run, not what they compute
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "plan.json").exists()
