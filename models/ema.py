"""Exponential moving average of a model's weights (parameters and floating-point buffers)."""
import copy

import torch
import torch.nn as nn

from .flat_params import flatten_, span, span_pair


def unwrap(model):
    """The plain module under torch.compile (``._orig_mod``) and DDP / DataParallel (``.module``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch._dynamo's OptimizedModule
            model = model._orig_mod
        else:
            return model


def get_tensor(module, name):
    """The parameter or buffer of ``module`` called ``name`` (e.g. 'mid.0.conv1.weight')."""
    prefix, _, key = name.rpartition(".")
    try:
        return getattr(module.get_submodule(prefix), key)
    except AttributeError:
        raise KeyError(f"EMA: the model has no tensor {name!r}; was the EMA made from another model?") from None


class EMA:
    """An averaged copy of a model: after each update, ema = ema + (1 - d) * (live - ema).

    ``self.model`` is the averaged model (eval mode, no grads), ready for sampling.
    With ``warmup`` the decay of update n (n = 0, 1, ...) is min(decay, (1 + n) / (10 + n)).
    Floating-point parameters and buffers are averaged; other tensors (e.g. BatchNorm's
    num_batches_tracked) are copied. Tensors are matched by name, so the live model may be the
    torch.compile'd or DDP-wrapped version of the one the EMA was made from.
    If the model's parameters are views of one buffer (models.FlatParams), the copy's are too, laid out the same
    way, and an update is one lerp over the buffer instead of a multi-tensor lerp over the parameters.
    """

    def __init__(self, model, decay=0.9999, warmup=True):
        self.model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        for p in self.model.parameters():
            p.grad = None
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0

        # Which tensors to average and which to copy, by name (built once).
        named = list(self.model.named_parameters()) + list(self.model.named_buffers())
        self.lerp_params = [n for n, p in self.model.named_parameters() if p.is_floating_point()]
        self.lerp_buffers = [n for n, b in self.model.named_buffers() if b.is_floating_point()]
        self.copy_names = [n for n, x in named if not x.is_floating_point()]
        # Parameter objects keep their identity through .to() and load_state_dict, so they are
        # cached; buffers are swapped for new tensors by .to(), so they are looked up each update
        # (a few dict lookups, no tensor math; the UNet has none).
        self.ema_params = [get_tensor(self.model, n) for n in self.lerp_params]
        live = [get_tensor(unwrap(model), n) for n in self.lerp_params]
        if span(live) is not None:      # one buffer (FlatParams): the copy in one buffer too, in the same order
            order = sorted(range(len(live)), key=lambda i: live[i].storage_offset())
            flatten_([self.ema_params[i] for i in order])
        self._spans = None        # (the copy's buffer, the live one) when both are laid out the same way
        self._live = None         # the live module whose parameters are cached below
        self._live_params = None

    def current_decay(self):
        """The decay the next update uses."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model):
        """Move the average towards ``model``'s current weights; one update."""
        model = unwrap(model)
        if model is not self._live:
            self._live = model
            self._live_params = [get_tensor(model, n) for n in self.lerp_params]
            self._spans = span_pair(self.ema_params, self._live_params)
        w = 1.0 - self.current_decay()
        if self._spans is not None:
            self._spans[0].lerp_(self._spans[1], w)
        elif self.ema_params:
            torch._foreach_lerp_(self.ema_params, self._live_params, w)
        if self.lerp_buffers:
            torch._foreach_lerp_([get_tensor(self.model, n) for n in self.lerp_buffers],
                                 [get_tensor(model, n) for n in self.lerp_buffers], w)
        if self.copy_names:
            torch._foreach_copy_([get_tensor(self.model, n) for n in self.copy_names],
                                 [get_tensor(model, n) for n in self.copy_names])
        self.num_updates += 1

    def state_dict(self):
        return {"model": self.model.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, sd):
        self.model.load_state_dict(sd["model"])  # copies in place: the cached tensors stay valid
        self.num_updates = int(sd["num_updates"])
        self.decay = float(sd["decay"])
