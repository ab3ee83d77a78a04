"""find_sites finds the MLP blocks of timm ViT/DeiT, Swin and ConvNeXt, and nothing else."""

import pytest
import torch
from conftest import small_model

import vbp


@pytest.mark.parametrize(
    "name,kwargs,count,first_width,channel_dim",
    [
        ("deit_tiny_patch16_224", {}, 12, 768, -1),
        ("swin_tiny_patch4_window7_224", {}, 12, 384, -1),
        ("convnext_tiny", {}, 18, 384, -1),
        ("convnext_tiny", {"conv_mlp": True}, 18, 384, 1),
    ],
)
def test_sites_of_supported_models(name, kwargs, count, first_width, channel_dim):
    with torch.device("meta"):
        sites = vbp.find_sites(small_model(name, **kwargs))
    assert len(sites) == count
    assert sites[0].width == first_width and sites[0].channel_dim == channel_dim


def test_model_without_sites_says_what_was_looked_for():
    with pytest.raises(vbp.VbpError, match="Looked for timm: timm.layers.Mlp.*site spec"):
        vbp.find_sites(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 4)))


def test_block_with_norm_after_activation_is_skipped():
    from timm.layers import Mlp

    block = Mlp(8, 16, norm_layer=torch.nn.LayerNorm)
    with pytest.raises(vbp.VbpError, match="normalisation layer sits between fc1 and fc2"):
        vbp.find_sites(torch.nn.Sequential(block))
