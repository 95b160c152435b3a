"""MNIST / Fashion-MNIST from their original IDX files (gzipped or not), with a small own reader.

Files are looked up in ``root`` itself (Debian's ``dataset-fashion-mnist`` layout, in
/usr/share/datasets/fashion-mnist) and in ``root/FashionMNIST/raw`` / ``root/MNIST/raw``
(torchvision's layout).
"""
import gzip
import os

import numpy as np

from utils.errors import UserError

IDX_IMAGES_MAGIC = 2051
FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
SUBDIR = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}
PRETTY = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}


def read_idx_images(path: str) -> np.ndarray:
    """Read an IDX3 image file (``.gz`` or plain) -> uint8 array N x H x W."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            buf = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file '{path}' ({e}); delete it and get it again") from None
    magic = int.from_bytes(buf[0:4], "big") if len(buf) >= 4 else -1
    if magic != IDX_IMAGES_MAGIC or len(buf) < 16:
        raise UserError(f"'{path}' is not an IDX image file (magic {magic}, expected "
                        f"{IDX_IMAGES_MAGIC}); delete it and get it again")
    n, h, w = (int.from_bytes(buf[i:i + 4], "big") for i in (4, 8, 12))
    if len(buf) - 16 != n * h * w:
        raise UserError(f"IDX file '{path}' is truncated or corrupt ({len(buf) - 16} bytes of "
                        f"pixels for {n}x{h}x{w}); delete it and get it again")
    return np.frombuffer(buf, dtype=np.uint8, offset=16).reshape(n, h, w)


def search_folders(name: str, root: str) -> list:
    """The folders searched for ``name``'s IDX files, in order."""
    return [root, os.path.join(root, SUBDIR[name], "raw")]


def find_idx(name: str, root: str, split: str):
    """Path of the split's image file (plain preferred over ``.gz``), or None."""
    for folder in search_folders(name, root):
        for fname in (FILES[split], FILES[split] + ".gz"):
            path = os.path.join(folder, fname)
            if os.path.isfile(path):
                return path
    return None


def load_idx_split(name: str, root: str, split: str, download: bool) -> np.ndarray:
    """uint8 N x H x W images of ``name`` ('mnist' | 'fashion_mnist') for ``split``."""
    path = find_idx(name, root, split)
    if path is None and download:
        _download(name, root, split)
        path = find_idx(name, root, split)
    if path is None:
        folders = ", ".join(search_folders(name, root))
        how = ("install Debian's package (apt-get install dataset-fashion-mnist; files land in "
               "/usr/share/datasets/fashion-mnist) and set --data.root there, or "
               if name == "fashion_mnist" else "")
        raise UserError(f"{PRETTY[name]} {split} split not found: looked for {FILES[split]}[.gz] "
                        f"in {folders}; {how}set --data.download true (needs network) to let "
                        f"torchvision download it into {root}, or point --data.root at a folder "
                        f"holding the IDX files")
    return read_idx_images(path)


def _download(name: str, root: str, split: str) -> None:
    """Let torchvision download the dataset into ``root/<Name>/raw``."""
    from torchvision import datasets as tvd

    cls = tvd.FashionMNIST if name == "fashion_mnist" else tvd.MNIST
    try:
        cls(root, train=(split == "train"), download=True)
    except Exception as e:  # no network, disk full, ...
        msg = " ".join(str(e).split())
        raise UserError(f"could not download {PRETTY[name]} into '{root}': {msg}") from None
