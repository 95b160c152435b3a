"""Datasets: CIFAR-10, MNIST, Fashion-MNIST, CelebA-HQ and image folders.

- :func:`load_uint8` -- a whole split as uint8 N x C x H x W (FID reference, GPU-resident data)
- :func:`build_dataset` -- a torch Dataset of uint8 C x H x W images
- :class:`DeviceLoader` -- endless random batches from a uint8 tensor on the device
"""
from datasets.device_loader import DeviceLoader
from datasets.host_loader import HostLoader
from datasets.registry import NAMES, SPLITS, build_dataset, load_uint8
from datasets.transforms import random_hflip, to_unit_range

__all__ = ["DeviceLoader", "HostLoader", "random_hflip", "NAMES", "SPLITS", "build_dataset", "load_uint8", "to_unit_range"]
