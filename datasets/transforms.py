"""Pixel preprocessing shared by every dataset: PIL resizing to uint8 and the [-1, 1] mapping.

The resizing is exactly torchvision's ``Resize`` (and ``CenterCrop``) on PIL images: PIL's bilinear, antialiased
resize, kept as uint8 (the FID reference statistics of this repo were computed with it; tests/test_datasets.py
compares with torchvision). Written with PIL alone: importing torchvision's transforms costs every command seconds.
"""
import numpy as np
import torch
from PIL import Image


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] (any shape) -> float32 in [-1, 1], as ``x / 127.5 - 1``."""
    return images_uint8.float() / 127.5 - 1.0


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """PIL image of mode 'L' or 'RGB' -> uint8 tensor C x H x W."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` then center-crop to ``size`` x ``size`` (no-op if already so)."""
    if img.size == (size, size):
        return img
    w, h = img.size
    long = int(size * max(w, h) / min(w, h))                       # torchvision: int(), not round()
    img = img.resize((size, long) if w <= h else (long, size), Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def resize_uint8(images: np.ndarray, size: int) -> torch.Tensor:
    """Resize a stack of uint8 images to ``size`` x ``size`` with ``Resize((size, size))`` on PIL.

    images: uint8 array N x H x W (grayscale) or N x H x W x 3 (RGB).
    Returns a uint8 tensor N x C x size x size (C = 1 or 3). No resize when H == W == size.
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if not images.flags.writeable:  # e.g. np.frombuffer; torch wants writable memory
        images = images.copy()
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    if (h, w) != (size, size):
        out = np.empty((n, size, size, c), dtype=np.uint8)
        for i in range(n):
            img = Image.fromarray(images[i, :, :, 0] if c == 1 else images[i])
            out[i] = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8).reshape(size, size, c)
        images = out
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def match_channels(images: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    """Make uint8 images N x C x H x W have ``channels`` channels (gray -> RGB by replication).

    Any other mismatch (RGB data, 1 channel asked) is a UserError naming ``what``.
    """
    from utils.errors import UserError

    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise UserError(f"{what} has {c} channels but data.img_channels is {channels}; "
                    f"set --data.img_channels {c}")


def random_hflip(x: torch.Tensor, generator: torch.Generator, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Flip each image of x (B×C×H×W) left-right with probability 1/2, on x's device, no host sync.

    The coin flips are drawn for the whole global batch (B × world, the same on every process, whose
    generators share a seed) and process `rank` takes its slice, so the flips do not depend on `world`.
    """
    B = x.shape[0]
    flip = (torch.rand(B * world, device=x.device, generator=generator) < 0.5)[rank * B:(rank + 1) * B]
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
