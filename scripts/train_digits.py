"""Train the embedded default model `vbp_digits_vit` on the digits training split, deterministically.

    .venv/bin/python scripts/train_digits.py   # rewrites python/vbp/assets/digits_vit.safetensors

AdamW with a cosine schedule, label smoothing and random 1-pixel shifts; seed 0, one thread, so the
same weights come out on every run of the same software. Prints test accuracy at the end.
"""

import argparse

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import DataLoader

import vbp
from vbp.families import digits_vit  # noqa: F401  (registers vbp_digits_vit with timm)
from vbp.families.embedded import MODEL_NAME, WEIGHTS
from vbp.files import atomic_path
from vbp.workflows.evaluate import accuracy


def random_shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel in each direction (zero padding at the value -1)."""
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[..., dy : dy + 8, dx : dx + 8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    model = timm.create_model(MODEL_NAME)
    train = DataLoader(vbp.digits_split("train"), batch_size=64, shuffle=True, generator=g)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=args.epochs * len(train), pct_start=0.1
    )
    for epoch in range(args.epochs):
        model.train()
        for images, labels in train:
            loss = F.cross_entropy(model(random_shift(images, g)), labels, label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        if (epoch + 1) % 20 == 0:
            print(f"epoch {epoch + 1}: loss {loss.item():.3f}")
    test = DataLoader(vbp.digits_split("test"), batch_size=256)
    print("test accuracy:", accuracy(model, test, progress=False))
    with atomic_path(WEIGHTS) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    print(f"wrote {WEIGHTS}")


if __name__ == "__main__":
    main()
