"""The embedded default model `vbp_digits_vit`: a small timm VisionTransformer for scikit-learn's digits,
registered with timm on import (the timm family imports this module before it creates a model). Its weights
(assets/digits_vit.safetensors) come from scripts/train_digits.py."""

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

from .embedded import ARCHITECTURE, MODEL_NAME, WEIGHTS

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
