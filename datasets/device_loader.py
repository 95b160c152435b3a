"""An infinite batch iterator over a uint8 image tensor that lives on the device (e.g. the GPU)."""
import torch

from datasets.transforms import random_hflip, to_unit_range


class DeviceLoader:
    """Endless random batches drawn on ``device``: no host sync, no per-sample Python loop.

    images_uint8: uint8 N x C x H x W (moved to ``device`` once).
    Each ``next()`` draws the indices of a whole global batch (``batch_size`` x ``world``, uniformly with
    replacement) from its own ``torch.Generator`` seeded with ``seed`` -- give every process the same seed --
    and process ``rank`` takes its slice, so the stream of global batches does not depend on the number of
    processes. It gathers them, mirrors each sample horizontally with probability 1/2 if ``random_flip``,
    and returns float32 batch_size x C x H x W in [-1, 1]. ``state_dict()`` / ``load_state_dict()`` hold
    the generator state, so a resumed run draws exactly the batches it would have drawn.
    """

    def __init__(self, images_uint8: torch.Tensor, batch_size: int, random_flip: bool,
                 seed: int, device, rank: int = 0, world: int = 1):
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
            raise ValueError(f"expected uint8 N x C x H x W, got {images_uint8.dtype} "
                             f"{tuple(images_uint8.shape)}")
        self.device = torch.device(device)
        self.images = images_uint8.to(self.device).contiguous()
        self.batch_size, self.random_flip = int(batch_size), bool(random_flip)
        self.rank, self.world = int(rank), int(world)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        n, b, g = self.images.shape[0], self.batch_size, self.generator
        idx = torch.randint(n, (b * self.world,), generator=g, device=self.device)[self.rank * b:(self.rank + 1) * b]
        x = self.images.index_select(0, idx)
        if self.random_flip:
            x = random_hflip(x, g, self.rank, self.world)
        return to_unit_range(x)

    def state_dict(self) -> dict:
        """{'generator': the generator's state (uint8 CPU tensor)}."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        self.generator.set_state(state["generator"].cpu())
