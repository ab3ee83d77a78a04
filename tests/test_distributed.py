"""Statistics gathered on 2 gloo processes (each its shard) and merged equal those of one process.

The model and data are float64: the ranks run other batch shapes and thread counts than the single process,
so their GEMMs round differently, and only float64 makes that rounding negligible on any CPU.
"""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import assert_stats_close, small_model

import vbp
from vbp.distributed import shard

PORT = "29531"


def _images() -> torch.Tensor:
    return torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _far_from_zero() -> tuple[torch.nn.Module, torch.Tensor]:
    """An MLP whose hidden values have mean 1e4 and spread 1e-2 (GELU is the identity there), and its data."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.GELU(), torch.nn.Linear(5, 2)).double()
    with torch.no_grad():
        model[0].bias.fill_(1e4)
    return model, 1e-2 * torch.randn(9, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _rank_main(rank: int, world: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=PORT)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = small_model("deit_tiny_patch16_224", img_size=32).double()
        loader = torch.utils.data.DataLoader(shard(torch.utils.data.TensorDataset(_images())), batch_size=2)
        stats = vbp.calibrate(model, loader, progress=False, covariance=["blocks.0.mlp", "blocks.11.mlp"])
        stats.save(os.path.join(out_dir, f"rank{rank}.safetensors"))
        far, x = _far_from_zero()
        loader = torch.utils.data.DataLoader(shard(torch.utils.data.TensorDataset(x)), batch_size=2)
        vbp.calibrate(far, loader, progress=False, covariance=True).save(os.path.join(out_dir, f"far{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_merge_to_single_process_statistics(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path)), nprocs=2, join=True)
    model = small_model("deit_tiny_patch16_224", img_size=32).double()
    single = vbp.calibrate(model, [_images()], progress=False, covariance=["blocks.0.mlp", "blocks.11.mlp"])
    ranks = [vbp.Stats.load(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    for merged in ranks:  # every rank ends with the same, global statistics
        assert merged.inputs == 7 and merged.batches == 4  # rank 0: 4 images in 2 batches, rank 1: 3 in 2
        assert_stats_close(merged, single, torch.float64)
        for site in single.covariances:
            want = single.covariance(site)
            tol = 256 * torch.finfo(torch.float64).eps * float(want.diagonal().max())
            torch.testing.assert_close(merged.covariance(site), want, rtol=0, atol=tol)
    torch.testing.assert_close(ranks[0].variance("blocks.0.mlp"), ranks[1].variance("blocks.0.mlp"), rtol=0, atol=0)

    far, x = _far_from_zero()
    hidden = torch.nn.functional.gelu(far[0](x)).detach()
    want = torch.cov(hidden.T, correction=0)
    # the mean is known to eps * 1e4 only; through Chan's term that bounds the covariance's accuracy
    tol = 64 * torch.finfo(torch.float64).eps * 1e4 * float(want.diagonal().max().sqrt())
    for r in range(2):
        merged = vbp.Stats.load(tmp_path / f"far{r}.safetensors")
        torch.testing.assert_close(merged.covariance(next(iter(merged.sites))), want, rtol=0, atol=tol)
