"""The embedded default data: scikit-learn's handwritten digits (imported when used), on which the embedded
model `vbp_digits_vit` (`vbp.families.embedded`) was trained.

The data set is the UCI Optical Recognition of Handwritten Digits test set as bundled by
scikit-learn (1797 8x8 grayscale images, 10 classes; licence CC BY 4.0, see assets/DIGITS_LICENSE.md).
"""

import torch
from torch.utils.data import TensorDataset


def digits_split(split: str) -> TensorDataset:
    """The "train" (1437 images) or "test" (360 images) split: images [N, 1, 8, 8] in [-1, 1], labels [N].

    The split is stratified and fixed (random_state=0), so every run sees the same images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

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
