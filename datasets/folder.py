"""Folders of images (CelebA-HQ, any image folder), read lazily with PIL.

All *.png / *.jpg / *.jpeg / *.webp under the folder, recursively, in sorted order. If
``root/<split>`` exists it is used for that split, else ``root`` serves every split.
"""
import os

import torch
from PIL import Image

from datasets.transforms import fit_square, pil_to_uint8
from utils.errors import UserError
from utils.files import IMAGE_EXTS

PATTERNS = ", ".join("*" + e for e in IMAGE_EXTS)


def list_images(name: str, root: str, split: str) -> list:
    """Sorted paths of the images for ``split``; a UserError when there are none."""
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        folder = root
    paths = []
    for dirpath, _, files in os.walk(folder, followlinks=True):
        paths += [os.path.join(dirpath, f) for f in files if f.lower().endswith(IMAGE_EXTS)]
    if not paths:
        state = "" if os.path.isdir(folder) else " (the folder does not exist)"
        hint = (" CelebA-HQ is not downloadable through torchvision: put its 256x256 images there"
                if name == "celebahq" else " put images there")
        raise UserError(f"no images ({PATTERNS}) found under {folder}{state};{hint} or point "
                        f"--data.root at a folder of images")
    return sorted(paths)


def load_image_uint8(path: str, size: int, channels: int) -> torch.Tensor:
    """One image file -> uint8 C x size x size (RGB or L by ``channels``; Resize + CenterCrop)."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError) as e:
        msg = " ".join(str(e).split())
        raise UserError(f"cannot read image '{path}' ({msg}); remove or replace it") from None
    return pil_to_uint8(fit_square(img, size))


class ImageFolderDataset(torch.utils.data.Dataset):
    """Lazily loaded image folder; items are uint8 C x H x W (no labels)."""

    def __init__(self, paths: list, size: int, channels: int):
        self.paths, self.size, self.channels = paths, size, channels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return load_image_uint8(self.paths[i], self.size, self.channels)
