"""Accuracy against a hand count; latency helpers: batches cycled to size, implementations timed in turn."""

import pytest
import torch
from torch import nn

import vbp
from vbp.timing import interleaved_medians
from vbp.workflows.evaluate import accuracy, latency_images


class FixedLogits(nn.Module):
    """Returns the logits stored for each image, found by the image's first pixel (its index)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, images):
        return self.logits[images[:, 0, 0, 0].long()]


def test_accuracy_counts_top1_and_top5_by_hand():
    logits = torch.tensor([[0.0, 3, 2, 1, 0, 0], [5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    labels = torch.tensor([1, 5, 0])  # top-1 right for image 0; image 1's label ranks 6th; image 2's 6th
    images = torch.arange(3.0).view(3, 1, 1, 1)
    result = accuracy(FixedLogits(logits), [(images, labels)], topk=(1, 5), progress=False)
    assert result == {"top1": pytest.approx(100 / 3), "top5": pytest.approx(100 / 3)}


def test_latency_images_cycles_the_data_to_the_batch_size():
    batches = [(torch.arange(3.0).view(3, 1, 1, 1), torch.zeros(3)), (torch.tensor([[[[3.0]]]]), torch.zeros(1))]
    images = latency_images(batches, 10, "cpu")
    assert images.flatten().tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert latency_images(batches, 2, "cpu").flatten().tolist() == [0, 1]
    with pytest.raises(vbp.VbpError, match="at least one image"):
        latency_images(batches, 0, "cpu")
    with pytest.raises(vbp.VbpError, match="no images"):
        latency_images([], 4, "cpu")


def test_interleaved_medians_time_the_callables_in_turn():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    medians = interleaved_medians(fns, rounds=4)
    assert calls == ["a", "b", "c"] * 5  # one warm-up round, then four timed ones, each in turn
    assert medians.keys() == fns.keys() and all(t >= 0 for t in medians.values())
