"""Training batches from a map-style Dataset through DataLoader workers, sharded and exactly resumable."""
import torch
from torch.utils.data import DataLoader

from datasets.transforms import random_hflip, to_unit_range


class HostLoader:
    """Infinite iterator of per-process batches: uint8 images read by DataLoader workers, moved to `device` and
    made float32 in [-1, 1] there, flipped there.

    Epoch e visits the dataset in the order torch.randperm(N, seed + e); each global batch of
    batch_size × world indices is split so that process `rank` takes its own slice (drop_last), and the
    flips are drawn for the global batch too: the global batches do not depend on the number of processes.
    The state (epoch, batches taken, flip generator) is small, so a resumed run sees the same batches.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int, world: int, device,
                 random_flip: bool, num_workers: int = 0):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world, self.device, self.random_flip = rank, world, torch.device(device), random_flip
        self.num_workers = num_workers
        self.batches_per_epoch = len(dataset) // (batch_size * world)
        if self.batches_per_epoch == 0:
            raise ValueError(f'dataset of {len(dataset)} images is smaller than one global batch')
        self.epoch, self.position = 0, 0
        self.flip_gen = torch.Generator(self.device).manual_seed(seed + 1)     # the same on every process
        self._it = None

    def _index_batches(self):
        perm = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        g = self.batch_size * self.world
        for b in range(self.position, self.batches_per_epoch):
            start = b * g + self.rank * self.batch_size
            yield perm[start:start + self.batch_size].tolist()

    def _start_epoch(self):
        # its own generator: creating an iterator must not draw from the global RNG (exact resume)
        gen = torch.Generator().manual_seed(self.seed + 7919 * self.epoch + self.rank)
        self._it = iter(DataLoader(self.dataset, batch_sampler=list(self._index_batches()), generator=gen,
                                   num_workers=self.num_workers, pin_memory=self.device.type == 'cuda'))

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self._it is None:
            self._start_epoch()
        try:
            x = next(self._it)
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
            x = next(self._it)
        self.position += 1
        x = to_unit_range(x.to(self.device, non_blocking=True))
        return random_hflip(x, self.flip_gen, self.rank, self.world) if self.random_flip else x

    def state_dict(self) -> dict:
        return {'epoch': self.epoch, 'position': self.position, 'flip_gen': self.flip_gen.get_state()}

    def load_state_dict(self, state: dict):
        self.epoch, self.position = state['epoch'], state['position']
        self.flip_gen.set_state(state['flip_gen'])
        self._it = None
