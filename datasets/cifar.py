"""CIFAR-10 from torchvision's python layout ``root/cifar-10-batches-py``, with a small own reader.

(torchvision's class checks md5 sums, which rules out small fake data in tests.) The batches are pickles; they are
read with an unpickler that rebuilds only plain containers and numpy arrays, so a crafted file cannot run code.
"""
import io
import os
import pickle

import numpy as np

from utils.errors import UserError

BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
FOLDER = "cifar-10-batches-py"


class ArraysOnly(pickle.Unpickler):
    """An unpickler for data files: dicts, lists, bytes, strings, numbers and numpy arrays, nothing that runs code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a data batch holds only arrays and lists")


def read_cifar_batch(path: str) -> np.ndarray:
    """One pickled batch (a dict with b'data': N x 3072 uint8) -> uint8 array N x 32 x 32 x 3."""
    try:
        with open(path, "rb") as f:
            d = ArraysOnly(io.BytesIO(f.read()), encoding="bytes").load()
        data = d[b"data"] if b"data" in d else d["data"]
        data = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
    except Exception as e:
        msg = " ".join(str(e).split())
        raise UserError(f"cannot read CIFAR-10 batch '{path}' ({type(e).__name__}: {msg}); "
                        f"delete {FOLDER} and get it again") from None
    return data.transpose(0, 2, 3, 1)


def find_folder(root: str):
    """The folder holding the batches: ``root/cifar-10-batches-py``, or ``root`` itself; or None."""
    for folder in (os.path.join(root, FOLDER), root):
        if all(os.path.isfile(os.path.join(folder, b)) for b in BATCHES["test"] + BATCHES["train"]):
            return folder
    return None


def load_cifar_split(root: str, split: str, download: bool) -> np.ndarray:
    """uint8 N x 32 x 32 x 3 images of CIFAR-10's ``split`` ('train': 50000, 'test': 10000)."""
    folder = find_folder(root)
    if folder is None and download:
        _download(root)
        folder = find_folder(root)
    if folder is None:
        where = os.path.join(root, FOLDER)
        missing = [b for b in BATCHES["train"] + BATCHES["test"]
                   if not os.path.isfile(os.path.join(where, b))]
        raise UserError(f"CIFAR-10 not found: looked for {FOLDER}/{{data_batch_1..5,test_batch}} "
                        f"in {root} (missing: {', '.join(missing)}); set --data.download true "
                        f"(needs network) to let torchvision download it there, or place the "
                        f"extracted {FOLDER} folder (cifar-10-python.tar.gz) in {root}, or point "
                        f"--data.root at its parent")
    return np.concatenate([read_cifar_batch(os.path.join(folder, b)) for b in BATCHES[split]])


def _download(root: str) -> None:
    """Let torchvision download and extract CIFAR-10 into ``root``."""
    from torchvision import datasets as tvd

    try:
        tvd.CIFAR10(root, train=True, download=True)
    except Exception as e:
        msg = " ".join(str(e).split())
        raise UserError(f"could not download CIFAR-10 into '{root}': {msg}") from None
