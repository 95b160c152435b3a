"""Tests for datasets/: readers on small fake data, preprocessing, DeviceLoader, error messages."""
import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from datasets import DeviceLoader, HostLoader, build_dataset, load_uint8
from utils.errors import UserError

DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"


def write_idx(path, images, magic=2051, compress=True):
    n, h, w = images.shape
    buf = b"".join(int(v).to_bytes(4, "big") for v in (magic, n, h, w)) + images.tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(buf)


def rand_uint8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture
def fmnist_root(tmp_path):
    """Fake Fashion-MNIST: train gzipped in root, test plain in torchvision's raw folder."""
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rand_uint8((5, 28, 28), 1))
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte", rand_uint8((3, 28, 28), 2), compress=False)
    return tmp_path


@pytest.fixture
def cifar_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rand_uint8((2, 3072), 10 + i)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [0, 1]}, f)
    return tmp_path


@pytest.fixture
def folder_root(tmp_path):
    sub = tmp_path / "imgs" / "nested"
    sub.mkdir(parents=True)
    Image.fromarray(rand_uint8((40, 60, 3), 3)).save(tmp_path / "imgs" / "b.png")
    Image.fromarray(rand_uint8((50, 30, 3), 4)).save(sub / "a.jpg")
    Image.fromarray(rand_uint8((16, 16), 5)).save(tmp_path / "imgs" / "c.PNG")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    return tmp_path / "imgs"


def cfg(name, root, size=32, channels=1, flip=False, download=False):
    return {"name": name, "root": str(root), "img_size": size, "img_channels": channels,
            "random_flip": flip, "download": download}


def test_idx_resize_matches_torchvision(fmnist_root):
    x = load_uint8(cfg("fashion_mnist", fmnist_root), "train")
    assert x.shape == (5, 1, 32, 32) and x.dtype == torch.uint8
    src = rand_uint8((5, 28, 28), 1)
    for i in range(5):
        ref = np.asarray(transforms.Resize((32, 32))(Image.fromarray(src[i])))
        assert torch.equal(x[i, 0], torch.from_numpy(ref.copy()))
    # torchvision's layout, plain file, no resize at native size, replicated to 3 channels
    t = load_uint8(cfg("fashion_mnist", fmnist_root, size=28, channels=3), "test")
    assert t.shape == (3, 3, 28, 28)
    assert torch.equal(t[:, 0], torch.from_numpy(rand_uint8((3, 28, 28), 2)))
    assert torch.equal(t[:, 0], t[:, 2])


def test_mnist_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", rand_uint8((2, 28, 28)))
    assert load_uint8(cfg("mnist", tmp_path), "test").shape == (2, 1, 32, 32)


def test_cifar_reader(cifar_root):
    x = load_uint8(cfg("cifar10", cifar_root, channels=3), "train")
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.uint8
    ref = rand_uint8((2, 3072), 10).reshape(2, 3, 32, 32)
    assert torch.equal(x[:2], torch.from_numpy(ref))
    assert load_uint8(cfg("cifar10", cifar_root, channels=3), "test").shape == (2, 3, 32, 32)
    with pytest.raises(UserError, match="3 channels.*img_channels 3"):
        load_uint8(cfg("cifar10", cifar_root, channels=1), "test")


def test_dataset_items_are_the_uint8_images(cifar_root):
    for split in ("train", "test"):
        ds = build_dataset(cfg("cifar10", cifar_root, channels=3, flip=True), split)   # flips are the loaders'
        ref = load_uint8(cfg("cifar10", cifar_root, channels=3), split)
        assert len(ds) == len(ref)
        for i in range(len(ds)):
            assert ds[i].dtype == torch.uint8 and torch.equal(ds[i], ref[i])


def test_host_loader_batches_flips_and_resume(cifar_root):
    """DataLoader batches of uint8 images become float32 in [-1, 1] on the device, each the image or its mirror,
    in the order of the epoch's permutation; the state resumes the stream exactly, mid-epoch."""
    ref = load_uint8(cfg("cifar10", cifar_root, channels=3), "train")
    ds = build_dataset(cfg("cifar10", cifar_root, channels=3), "train")
    a = HostLoader(ds, 4, seed=5, rank=0, world=1, device="cpu", random_flip=True)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(5))
    first = next(a)
    assert first.dtype == torch.float32 and first.shape == (4, 3, 32, 32)
    unit = ref.float() / 127.5 - 1
    mirrored = [torch.equal(first[k], unit[perm[k]].flip(-1)) for k in range(4)]
    assert all(m or torch.equal(first[k], unit[perm[k]]) for k, m in enumerate(mirrored))
    state = a.state_dict()
    b = HostLoader(ds, 4, seed=5, rank=0, world=1, device="cpu", random_flip=True)
    b.load_state_dict(state)
    for _ in range(3):                  # across the epoch boundary (2 batches of 4 per epoch of 10)
        assert torch.equal(next(a), next(b))
    flips = torch.cat([next(a) for _ in range(20)])
    assert any(not torch.equal(s, s.flip(-1)) and (s == unit.flip(-1)).flatten(1).all(1).any() for s in flips)


def test_image_folder(folder_root):
    c = cfg("image_folder", folder_root, size=32, channels=3)
    x = load_uint8(c)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.uint8
    paths = sorted([folder_root / "b.png", folder_root / "c.PNG", folder_root / "nested" / "a.jpg"])
    tf = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32)])
    for i, p in enumerate(paths):
        ref = np.asarray(tf(Image.open(p).convert("RGB")))
        assert torch.equal(x[i], torch.from_numpy(ref.copy()).permute(2, 0, 1))
    ds = build_dataset(c, "test")
    assert len(ds) == 3 and torch.equal(ds[1], x[1])
    gray = build_dataset(cfg("celebahq", folder_root, size=16, channels=1), "train")
    assert gray[0].shape == (1, 16, 16)
    # root/<split> is used when it exists
    (folder_root / "train").mkdir()
    Image.fromarray(rand_uint8((32, 32, 3))).save(folder_root / "train" / "only.webp")
    assert load_uint8(c, "train").shape == (1, 3, 32, 32)


def test_device_loader(cifar_root):
    data = load_uint8(cfg("cifar10", cifar_root, channels=3), "train")
    a = DeviceLoader(data, 16, random_flip=True, seed=3, device="cpu")
    b = DeviceLoader(data, 16, random_flip=True, seed=3, device="cpu")
    batches = [next(a) for _ in range(3)]
    for batch in batches:
        assert batch.shape == (16, 3, 32, 32) and batch.dtype == torch.float32
        assert torch.equal(batch, next(b))
    assert not torch.equal(next(DeviceLoader(data, 16, True, seed=4, device="cpu")), batches[0])
    # state round trip: a fresh loader resumed from a's state continues exactly like a
    state = a.state_dict()
    c = DeviceLoader(data, 16, random_flip=True, seed=99, device="cpu")
    c.load_state_dict(state)
    assert all(torch.equal(next(a), next(c)) for _ in range(2))
    # every sample is a dataset image or its exact mirror image, and both occur
    ref = data.float() / 127.5 - 1
    kinds = set()
    for batch in batches:
        for s in batch:
            same = (s == ref).flatten(1).all(1).any().item()
            mirror = (s == ref.flip(-1)).flatten(1).all(1).any().item()
            assert same or mirror
            kinds.add("mirror" if mirror and not same else "same")
    assert kinds == {"same", "mirror"}
    no_flip = DeviceLoader(data, 32, random_flip=False, seed=0, device="cpu")
    assert all((s == ref).flatten(1).all(1).any() for s in next(no_flip))


def test_missing_fashion_mnist_message(tmp_path):
    with pytest.raises(UserError) as e:
        load_uint8(cfg("fashion_mnist", tmp_path), "train")
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("train-images-idx3-ubyte", str(tmp_path), os.path.join("FashionMNIST", "raw"),
                 "apt-get install dataset-fashion-mnist", "--data.download true", "--data.root"):
        assert part in msg, part
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.*MNIST/raw.*--data.download true"):
        load_uint8(cfg("mnist", tmp_path), "test")


def test_missing_cifar_message(tmp_path):
    with pytest.raises(UserError) as e:
        load_uint8(cfg("cifar10", tmp_path, channels=3), "train")
    msg = str(e.value)
    for part in ("cifar-10-batches-py", "data_batch_1", str(tmp_path), "--data.download true"):
        assert part in msg, part


def test_missing_image_folder_message(tmp_path):
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "empty", tmp_path / "absent"):
        with pytest.raises(UserError, match=r"no images \(\*\.png, \*\.jpg") as e:
            build_dataset(cfg("image_folder", root, channels=3))
        assert str(root) in str(e.value)


def test_unknown_name_and_corrupt_idx(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'imagenet'.*cifar10, mnist, fashion_mnist"):
        load_uint8(cfg("imagenet", tmp_path))
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(bad, rand_uint8((2, 28, 28)), magic=2049)
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz.*not an IDX image file"):
        load_uint8(cfg("fashion_mnist", tmp_path))


def test_real_debian_fashion_mnist_test_split():
    assert os.path.isdir(DEBIAN_FMNIST), "install it: apt-get install dataset-fashion-mnist"
    x = load_uint8(cfg("fashion_mnist", DEBIAN_FMNIST), "test")
    assert x.shape == (10000, 1, 32, 32) and x.dtype == torch.uint8
    assert 0 < x.float().mean() < 255
