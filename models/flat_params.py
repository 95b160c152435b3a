"""A model's parameters as views of one flat buffer, so the per-step work over all of them is one kernel each.

The MNIST-config UNet has 304 parameter tensors. Gradient clipping, fused Adam, the EMA's lerp and the bf16 copy's
refresh walk them as tensor lists; a multi-tensor kernel takes 36-110 tensors per launch and gives each small
tensor a thread block of its own, so on an H100 these took 0.72 ms of the 11.9 ms compiled step in 32 launches,
several times what their bytes cost at the memory bandwidth (bench/NOTES.md, attempt 12). With the parameters
as views of one buffer, each of them runs over a single tensor:

    flat = FlatParams(net, bf16_weights)     # after the model is placed (.to, accelerator.prepare); before the EMA
    optimizer = Adam([flat.param], ...)      # one parameter: the whole buffer
    loss.backward()
    flat.gather_grads()                      # each parameter's (or its bf16 copy's) gradient -> flat.param.grad
    clip_grad_norm_([flat.param], ...); optimizer.step()

The model's Parameter objects, names, shapes and strides stay as they were (`Parameter.data` points into the
buffer), so state_dicts, DDP and torch.compile see the same model. The optimizer's state is one tensor per
kind; `state_to_params` / `state_from_params` convert it to and from the per-parameter state_dict that Adam over
`module.parameters()` writes, so checkpoints do not depend on this setting. The numbers are the same as the
per-parameter optimizer's, except the clipping norm's summation order, and that a parameter without a gradient
in a step gets a zero gradient (Adam's moments and weight decay still move it) where a per-parameter optimizer
skips it; the UNet uses every parameter in every step. The buffer holds a few zeros between parameters (ALIGN);
their gradient is zero, so Adam, the clipping norm and the EMA leave them zero.
"""
import torch
import torch.nn as nn


def is_dense(t: torch.Tensor) -> bool:
    """True when `t` fills exactly `t.numel()` consecutive elements of its storage (contiguous or channels_last)."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


# Every tensor starts at a multiple of ALIGN elements of its buffer (32 bytes in bf16, 64 in fp32). A CUDA-graphed
# compiled model treats a parameter as a static input only if it is 16-byte aligned; otherwise inductor copies it
# into an aligned buffer on every call (attempt 15: the MNIST UNet's 1-element output bias put the 102 GroupNorm
# parameters after it off alignment, 106 cudaMemcpyAsync per step).
ALIGN = 16


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def flatten_(tensors, dtype=None) -> torch.Tensor:
    """Point each tensor's `.data` at a slice of one new 1-D buffer, in the given order, each starting at a multiple
    of ALIGN elements (zeros between), keeping its values (cast to `dtype` if given), shape and strides; returns the
    buffer. Every tensor must be dense (`is_dense`)."""
    tensors = list(tensors)
    for t in tensors:
        if not is_dense(t):
            raise ValueError(f'flatten_: a tensor of shape {tuple(t.shape)} and strides {t.stride()} is not dense')
    offsets, end = [], 0
    for t in tensors:
        offsets.append(_aligned(end))
        end = offsets[-1] + t.numel()
    flat = torch.zeros(end, dtype=dtype or tensors[0].dtype, device=tensors[0].device)
    for t, offset in zip(tensors, offsets):
        view = flat.as_strided(t.shape, t.stride(), offset)
        view.copy_(t.detach())
        t.data = view
    return flat


def span(tensors):
    """The 1-D view of storage that `tensors` tile (all dense, of one storage and dtype, together covering a range
    of it in any order, without overlap and with gaps shorter than ALIGN elements, as `flatten_` leaves), or None."""
    tensors = list(tensors)
    if not tensors:
        return None
    first = tensors[0]
    ptr = first.untyped_storage().data_ptr()
    ranges = []
    for t in tensors:
        if t.untyped_storage().data_ptr() != ptr or t.dtype != first.dtype or not is_dense(t):
            return None
        ranges.append((t.storage_offset(), t.numel()))
    ranges.sort()
    if any(not 0 <= o_next - (o + n) < ALIGN for (o, n), (o_next, _) in zip(ranges, ranges[1:])):
        return None
    start = ranges[0][0]
    return first.detach().as_strided((ranges[-1][0] + ranges[-1][1] - start,), (1,), start)


def span_pair(a, b):
    """(span(a), span(b)) when both lists tile a buffer the same way (a[i] and b[i] of one shape and strides, at
    the same place in their buffers), so an elementwise op over the two spans is the op over each pair; else None."""
    sa, sb = span(a), span(b)
    if sa is None or sb is None or len(a) != len(b):
        return None
    for x, y in zip(a, b):
        if x.shape != y.shape or x.stride() != y.stride() or \
                x.storage_offset() - sa.storage_offset() != y.storage_offset() - sb.storage_offset():
            return None
    return sa, sb


class FlatParams:
    """`module`'s trainable parameters moved into one fp32 buffer, `self.param`, for the optimizer and the clipping.

    With `bf16_weights` (models.BF16Weights, made before this), the parameters it copies come first in the
    buffer and its bf16 copies are laid out the same way in a bf16 buffer, so its `refresh` is one cast; their
    gradients are taken from the copies.
    """

    def __init__(self, module: nn.Module, bf16_weights=None):
        self.index = list(module.parameters())        # the order a per-parameter optimizer holds them in
        if not all(p.requires_grad for p in self.index):
            raise ValueError('FlatParams: every parameter must require grad')
        copy_of = dict(zip(bf16_weights.master, bf16_weights.copies)) if bf16_weights else {}
        first = list(copy_of)
        self.params = first + [p for p in self.index if p not in copy_of]
        self.param = nn.Parameter(flatten_(self.params))
        self.sources = [copy_of.get(p, p) for p in self.params]   # where each parameter's gradient arrives
        if bf16_weights:
            bf16_weights.flatten_copies()
        self.grad = None
        self._grad_views = None

    def view(self, p, flat: torch.Tensor) -> torch.Tensor:
        """Parameter `p`'s part of a tensor laid out like the buffer (its gradient, an optimizer state): where `p`
        sits in the buffer, which starts at offset 0 of its storage."""
        return flat.as_strided(p.shape, p.stride(), flat.storage_offset() + p.storage_offset())

    @torch.no_grad()
    def gather_grads(self):
        """Copy every parameter's gradient (the bf16 copy's, for copied ones) into `self.param.grad` and clear
        theirs, so the next backward starts from none. Call after the backward (after all micro-batches)."""
        if self.grad is None:      # the first call: check that nothing gave a parameter new storage since __init__
            ptr = self.param.untyped_storage().data_ptr()
            if any(p.untyped_storage().data_ptr() != ptr for p in self.params):
                raise RuntimeError('FlatParams: a parameter no longer lives in the flat buffer (moved by .to() or '
                                   'replaced after FlatParams was made); make FlatParams after moving the model')
            self.grad = torch.zeros_like(self.param)
            self._grad_views = [self.view(p, self.grad) for p in self.params]
        groups = {}
        for src, view in zip(self.sources, self._grad_views):
            if src.grad is None:
                view.zero_()
                continue
            dst, grads = groups.setdefault(src.grad.dtype, ([], []))
            dst.append(view)
            grads.append(src.grad)
            src.grad = None
        for dst, grads in groups.values():
            torch._foreach_copy_(dst, grads)
        self.param.grad = self.grad

    def state_to_params(self, state_dict: dict) -> dict:
        """The flat optimizer's state_dict as the same optimizer over `module.parameters()` writes it (per-parameter
        states are views of the flat ones; each its own `step`)."""
        (group,) = state_dict['param_groups']
        flat = state_dict['state'].get(group['params'][0], {})
        state = {}
        if flat:
            for i, p in enumerate(self.index):
                state[i] = {k: v.clone() if k == 'step' else self.view(p, v) if torch.is_tensor(v) else v
                            for k, v in flat.items()}
        return {'state': state, 'param_groups': [dict(group, params=list(range(len(self.index))))]}

    def state_from_params(self, state_dict: dict) -> dict:
        """The inverse of `state_to_params`: a per-parameter optimizer state_dict (from any run of this model) as
        the flat optimizer's. Parameters without a state get zeros; `step` is the first parameter's."""
        groups = state_dict['param_groups']
        if len(groups) != 1 or len(groups[0]['params']) != len(self.index):
            raise ValueError(f'the optimizer state has {len(groups)} parameter group(s) with '
                             f'{[len(g["params"]) for g in groups]} parameters; this model has one group of '
                             f'{len(self.index)}')
        ids = groups[0]['params']
        states = [state_dict['state'].get(i) for i in ids]
        flat = {}
        present = [(p, s) for p, s in zip(self.index, states) if s]
        if present:
            for key, value in present[0][1].items():
                if key == 'step' or not torch.is_tensor(value):
                    flat[key] = value
                    continue
                buf = torch.zeros(self.param.numel(), dtype=value.dtype, device=value.device)
                for p, s in present:
                    self.view(p, buf).copy_(s[key])
                flat[key] = buf
        return {'state': {0: flat} if flat else {}, 'param_groups': [dict(groups[0], params=[0])]}
