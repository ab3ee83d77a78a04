"""The embedded default model, `vbp_digits_vit`: a small timm ViT trained on scikit-learn's digits (scripts/
train_digits.py); its name, architecture and weights file. `digits_vit.py` registers it with timm when the timm
family first creates a model; this file imports nothing heavy."""

from pathlib import Path

WEIGHTS = Path(__file__).parents[1] / "assets" / "digits_vit.safetensors"
MODEL_NAME = "vbp_digits_vit"
ARCHITECTURE = dict(
    img_size=8,
    patch_size=2,
    in_chans=1,
    num_classes=10,
    embed_dim=32,
    depth=4,
    num_heads=4,
    mlp_ratio=4.0,
    global_pool="token",
)
