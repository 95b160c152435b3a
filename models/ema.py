"""Exponential moving average of a model's weights (parameters and floating-point buffers)."""
import copy

import torch
import torch.nn as nn


def unwrap(model):
    """The plain module under torch.compile (``._orig_mod``) and DDP / DataParallel (``.module``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch._dynamo's OptimizedModule
            model = model._orig_mod
        else:
            return model


class EMA:
    """An averaged copy of ``model``: after each ``update()``, ema = ema + (1 - d) * (live - ema).

    ``self.model`` is the averaged model (eval mode, no grads), ready for sampling. ``model`` is the live one
    (unwrapped if compiled or DDP-wrapped); its Parameter objects are what ``update`` reads.
    With ``warmup`` the decay of update n (n = 0, 1, ...) is min(decay, (1 + n) / (10 + n)).
    Floating-point parameters and buffers are averaged, other tensors (e.g. BatchNorm's num_batches_tracked)
    copied. ``average(averaged, live)`` lets the speed layer hand it the parameters as other tensors laid out
    over the same memory (one flat buffer each: models/fast).
    """

    def __init__(self, model, decay=0.9999, warmup=True):
        self.live = unwrap(model)
        self.model = copy.deepcopy(self.live).eval().requires_grad_(False)
        for p in self.model.parameters():
            p.grad = None
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        # Parameter objects keep their identity through .to() and load_state_dict, so they are paired once;
        # buffers are swapped for new tensors by .to(), so they are looked up by name at each update (the UNet has
        # none, and walking its modules for them every step was a tenth of a millisecond of host time).
        live = dict(self.live.named_parameters())
        names = [n for n, p in self.model.named_parameters() if p.is_floating_point()]
        self.pairs = ([self.model.get_parameter(n) for n in names], [live[n] for n in names])
        self.buffer_names = [n for n, _ in self.model.named_buffers()]

    def average(self, averaged, live):
        """Average the tensors ``live`` into ``averaged`` at each update instead of the parameters one by one
        (together they must cover the same values: e.g. one buffer each, of which the parameters are views)."""
        self.pairs = (list(averaged), list(live))

    def current_decay(self):
        """The decay the next update uses."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self):
        """Move the average one step towards the live model's current weights."""
        w = 1.0 - self.current_decay()
        if self.pairs[0]:
            torch._foreach_lerp_(*self.pairs, w)
        for name in self.buffer_names:
            b, src = self.model.get_buffer(name), self.live.get_buffer(name)
            if b.is_floating_point():
                b.lerp_(src, w)
            else:
                b.copy_(src)
        self.num_updates += 1

    def state_dict(self):
        return {"model": self.model.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, sd):
        self.model.load_state_dict(sd["model"])  # copies in place: the paired tensors stay valid
        self.num_updates = int(sd["num_updates"])
        self.decay = float(sd["decay"])
