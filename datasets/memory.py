"""A dataset over a uint8 image tensor held in memory (the small torchvision datasets)."""
import torch

from datasets.transforms import to_unit_range


class UInt8TensorDataset(torch.utils.data.Dataset):
    """Items of a uint8 N x C x H x W tensor as float32 C x H x W in [-1, 1] (no labels).

    With ``random_flip`` each item is mirrored horizontally with probability 1/2.
    """

    def __init__(self, images_uint8: torch.Tensor, random_flip: bool):
        self.images, self.random_flip = images_uint8, random_flip

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        x = self.images[i]
        if self.random_flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return to_unit_range(x)
