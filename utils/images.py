"""Image files: [-1, 1] tensors to uint8, atomic PNG/NPZ writes, rows and grids.

Images are uint8 tensors C×H×W (C = 1 or 3) unless said otherwise; files are written atomically
(utils.files.atomic_write), so a killed process never leaves a half-written file.
"""
from typing import List, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from utils.files import atomic_write


def quantize_uint8(x: Tensor) -> Tensor:
    """Floats in [-1, 1] -> uint8 on x's device, rounded as torchvision's save_image does (floor of v + 0.5)."""
    return ((x.detach().float() + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)


def to_uint8(x: Tensor) -> Tensor:
    """B×C×H×W (or C×H×W) floats in [-1, 1] -> uint8 on the CPU (quantize_uint8, then to the CPU)."""
    return quantize_uint8(x).cpu()


def save_png(img: Tensor, path: str):
    """Write a uint8 C×H×W image (C = 1: grayscale, C = 3: RGB) as PNG, atomically."""
    arr = img.permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    atomic_write(path, lambda f: pil.save(f, format='PNG'), fsync=False)


def load_png(path: str) -> np.ndarray:
    """A PNG as an H×W×C uint8 array (C = 1 for grayscale)."""
    with Image.open(path) as im:
        arr = np.array(im)
    return arr[:, :, None] if arr.ndim == 2 else arr


def save_npz(images: np.ndarray, path: str):
    """Write N×H×W×C uint8 images as `arr_0` of an .npz (the layout FID tools read), atomically."""
    atomic_write(path, lambda f: np.savez(f, images))


def row(frames: Sequence[Tensor]) -> Tensor:
    """n uint8 C×H×W frames side by side, no padding: C×H×(n·W)."""
    return torch.cat(list(frames), dim=2)


def grid(images: List[Tensor], nrow: int, padding: int = 2) -> Tensor:
    """uint8 C×H×W images (same size) in a grid of `nrow` per line with `padding` black pixels: 3×H'×W' (gray is
    replicated), laid out as torchvision's make_grid lays them out."""
    x = torch.stack(images)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    out = torch.zeros((c, rows * (h + padding) + padding, cols * (w + padding) + padding), dtype=x.dtype)
    for k in range(n):
        top, left = (k // cols) * (h + padding) + padding, (k % cols) * (w + padding) + padding
        out[:, top:top + h, left:left + w] = x[k]
    return out


class Uint8Images(torch.utils.data.Dataset):
    """Images held in memory as a uint8 tensor N×C×H×W (C = 1 or 3); item i is image i, uint8 C×H×W.

    `rgb`: 1-channel images are given as 3 (replicated), the input Inception takes. `.size` is (H, W).
    """

    def __init__(self, images: Tensor, rgb: bool = False):
        if not torch.is_tensor(images) or images.dtype != torch.uint8 or images.dim() != 4 \
                or images.shape[1] not in (1, 3):
            got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"expected a uint8 tensor N x C x H x W with C = 1 or 3, got {got}")
        self.images = images.detach().cpu()
        if rgb:
            self.images = self.images.expand(-1, 3, -1, -1)
        self.size = tuple(images.shape[2:])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]
