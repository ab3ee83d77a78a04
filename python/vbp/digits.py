"""The embedded default: scikit-learn's handwritten digits and a small timm ViT trained on them.

The data set is the UCI Optical Recognition of Handwritten Digits test set as bundled by
scikit-learn (1797 8x8 grayscale images, 10 classes; licence CC BY 4.0, see assets/DIGITS_LICENSE.md).
The model `vbp_digits_vit` is a timm VisionTransformer registered under that name; its weights
(assets/digits_vit.safetensors) come from scripts/train_digits.py.
"""

from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import TensorDataset

WEIGHTS = Path(__file__).parent / "assets" / "digits_vit.safetensors"
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

# timm reads `default_cfgs` of the module that registers a model.
default_cfgs = generate_default_cfgs(
    {
        f"{MODEL_NAME}.sklearn": dict(
            file=str(WEIGHTS),
            input_size=(1, 8, 8),
            num_classes=10,
            mean=(0.5,),
            std=(0.5,),
            crop_pct=1.0,
            license="CC-BY-4.0 (data)",
            first_conv="patch_embed.proj",
            classifier="head",
        ),
    }
)


@register_model
def vbp_digits_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A 4-block ViT for 1x8x8 digit images (2x2 patches, width 32, MLP hidden width 128)."""
    return build_model_with_cfg(VisionTransformer, MODEL_NAME, pretrained, **dict(ARCHITECTURE, **kwargs))


def digits_split(split: str) -> TensorDataset:
    """The "train" (1437 images) or "test" (360 images) split: images [N, 1, 8, 8] in [-1, 1], labels [N].

    The split is stratified and fixed (random_state=0), so every run sees the same images.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=0.2, random_state=0, stratify=labels.numpy()
    )
    idx = torch.as_tensor(train_idx if split == "train" else test_idx)
    return TensorDataset(images[idx], labels[idx])
