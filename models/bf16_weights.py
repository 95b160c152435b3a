"""Mixed-precision training with a bf16 copy of the weights: the fp32 model stays the master copy."""
import copy

import torch
import torch.nn as nn

from .flat_params import flatten_, span_pair


def conv_weights_channels_last_(model: nn.Module) -> nn.Module:
    """Store every Conv2d weight of ``model`` channels_last, in place (same values, parameters and state_dict keys)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    return model


class BF16Weights:
    """A copy of ``model`` whose convolution and linear weights and biases are bf16; the model runs on the copy.

    Under bf16 autocast an fp32 model casts each conv/linear weight and bias to bf16 inside every forward, one
    kernel per tensor, and casts each of their gradients back to fp32 in the backward. Here those casts are two
    multi-tensor copies per step, a handful of kernels each. On an H100 the compiled MNIST-config step went from
    1489 to 1142 kernels (with UNet.project_embedding) and 1-3% faster; the CIFAR-10 config's step, no faster
    (bench/NOTES.md, attempts 11-12):

        weights = BF16Weights(model)          # before the EMA and the optimizer see the model
        loss = loss_fn(weights.model(x))      # under bf16 autocast
        loss.backward()
        weights.grads_to_master()             # bf16 gradients -> the fp32 parameters' .grad
        optimizer.step()                      # on model.parameters(), in fp32
        weights.refresh()                     # fp32 weights -> the bf16 copy

    The numbers are autocast's: it rounds each weight to bf16 as `refresh` does, and casts each bf16 gradient to
    fp32 as `grads_to_master` does. Other parameters (GroupNorm's, which autocast runs in fp32) are shared, not
    copied: ``self.model`` holds the same Parameter objects, and their gradients reach ``model`` directly.

    Layout (`channels_last`, default True): 4-D (convolution) weights of ``model`` are made channels_last in place,
    and the copy's are too, so a channels_last compiled graph takes them as they are and their gradients need no
    layout change; the multi-tensor copies need matching strides on both sides. ``model``'s state_dict keeps its
    names and shapes. False leaves the layouts alone.
    With gradient accumulation or DDP, the copied weights' gradients are summed and all-reduced in bf16.
    """

    def __init__(self, model: nn.Module, dtype=torch.bfloat16, channels_last=True):
        if channels_last:
            conv_weights_channels_last_(model)
        self.model = copy.deepcopy(model)
        self.master, self.copies = [], []
        for name, p in model.named_parameters():
            prefix, _, key = name.rpartition('.')
            holder = self.model.get_submodule(prefix)
            if isinstance(holder, (nn.Conv2d, nn.Linear)):
                c = nn.Parameter(torch.empty_like(p, dtype=dtype), requires_grad=p.requires_grad)
                setattr(holder, key, c)
                self.master.append(p)
                self.copies.append(c)
            else:
                setattr(holder, key, p)                   # shared: GroupNorm's weight and bias
        self._grads = None                                # fp32 gradient buffers, allocated once
        self._spans = None                                # (copies, master) as two flat buffers: flatten_copies
        self.refresh()

    def flatten_copies(self):
        """Lay the copies out in one bf16 buffer as the master weights are laid out in theirs (models.FlatParams
        calls this after flattening them), so `refresh` is one cast over the buffer."""
        flatten_(self.copies)
        self._spans = span_pair(self.copies, self.master)

    @torch.no_grad()
    def refresh(self):
        """Copy the fp32 weights into the bf16 copy (after every optimizer step and every checkpoint load)."""
        if self._spans is not None:
            self._spans[0].copy_(self._spans[1])
        else:
            torch._foreach_copy_(self.copies, self.master)

    @torch.no_grad()
    def grads_to_master(self):
        """Move the copy's bf16 gradients into the fp32 parameters' .grad (as fp32), and clear them on the copy."""
        pairs = [(p, c) for p, c in zip(self.master, self.copies) if c.grad is not None]
        if not pairs:
            return
        if self._grads is None:
            self._grads = {p: torch.empty_like(p) for p in self.master}
        torch._foreach_copy_([self._grads[p] for p, _ in pairs], [c.grad for _, c in pairs])
        for p, c in pairs:
            p.grad = self._grads[p]
            c.grad = None

    def match_optimizer_state(self, optimizer):
        """Give loaded optimizer state (e.g. from a checkpoint written without this class) the parameters' strides,
        which fused and multi-tensor optimizers need."""
        for p, state in optimizer.state.items():
            for k, v in state.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
