"""Dispatch on ``data_cfg['name']``: load a split as one uint8 tensor, or as a Dataset of uint8 images."""
import torch

from datasets.cifar import load_cifar_split
from datasets.folder import ImageFolderDataset, list_images
from datasets.idx import load_idx_split
from datasets.transforms import match_channels, resize_uint8
from utils.errors import UserError
from utils.images import Uint8Images

NAMES = ("cifar10", "mnist", "fashion_mnist", "celebahq", "image_folder")
FOLDER_NAMES = ("celebahq", "image_folder")
SPLITS = ("train", "test")


def load_uint8(data_cfg: dict, split: str = "train") -> torch.Tensor:
    """The whole split as uint8 N x C x S x S (S = data.img_size, C = data.img_channels).

    Torchvision-style datasets are resized with ``Resize((S, S))`` on PIL images (skipped when
    already S x S); image folders with ``Resize(S)`` + ``CenterCrop(S)``.
    """
    name, root, size, channels = _check(data_cfg, split)
    if name in FOLDER_NAMES:
        ds = build_dataset(data_cfg, split)
        return torch.stack([ds[i] for i in range(len(ds))])
    download = bool(data_cfg.get("download", False))
    if name == "cifar10":
        arr = load_cifar_split(root, split, download)
    else:
        arr = load_idx_split(name, root, split, download)
    return match_channels(resize_uint8(arr, size), channels, name)


def build_dataset(data_cfg: dict, split: str = "train") -> torch.utils.data.Dataset:
    """A Dataset of uint8 C x S x S images (no labels, no flips: the loaders flip on the device).

    Image folders are read lazily per item; the small datasets are held in memory.
    """
    name, root, size, channels = _check(data_cfg, split)
    if name in FOLDER_NAMES:
        return ImageFolderDataset(list_images(name, root, split), size, channels)
    return Uint8Images(load_uint8(data_cfg, split))


def _check(data_cfg: dict, split: str):
    """Validate the data config; return ``(name, root, img_size, img_channels)``."""
    name = data_cfg.get("name")
    if name not in NAMES:
        raise UserError(f"unknown dataset '{name}' (data.name); valid names: {', '.join(NAMES)}")
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; valid splits: {', '.join(SPLITS)}")
    for key in ("root", "img_size", "img_channels"):
        if data_cfg.get(key) is None:
            raise UserError(f"config key 'data.{key}' is missing; set it with --data.{key}")
    size, channels = data_cfg["img_size"], data_cfg["img_channels"]
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise UserError(f"data.img_size must be a positive int, got {size!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise UserError(f"data.img_channels must be 1 or 3, got {channels!r}")
    return name, str(data_cfg["root"]), size, channels
