"""The training weights of the speed layer: a bf16 copy to run the model on, and one flat buffer for the optimizer.

    weights = FastWeights(net, bf16_copy=True, flat=True)   # net on its device, before the EMA copies it
    optimizer = Adam(weights.params)          # net's fp32 parameters (flat: one tensor, the whole buffer)
    ema = EMA(net); weights.attach_ema(ema)   # flat: the EMA averages one buffer
    loss = loss_fn(weights.model(x))          # under bf16 autocast
    loss.backward()
    weights.grads_to_params()                 # gradients -> weights.params[i].grad (and, flat, summed over processes)
    clip_grad_norm_(weights.params, ...); optimizer.step(); optimizer.zero_grad(set_to_none=True)
    weights.refresh()                         # the bf16 copy follows the fp32 weights
    ema.update()

Both off, it is a pass-through: `model` is `net`, `params` its parameters, and the hooks do nothing.

**bf16 copy** (`bf16_copy`). Under bf16 autocast an fp32 model casts each conv/linear weight and bias to bf16 in every
forward, one kernel per tensor, and each gradient back to fp32 in the backward. Here `model` is a copy of `net` whose
conv/linear weights and biases are bf16 parameters, refreshed from the fp32 ones after each step; GroupNorm's
parameters (which autocast runs in fp32) are shared, not copied. The numbers are autocast's: it rounds each weight
to bf16 as `refresh` does and casts each bf16 gradient to fp32 as `grads_to_params` does. Convolution weights are
made channels_last (in `net` too, in place: same values and state_dict), the layout the compiled graph uses.

**Flat buffer** (`flat`). The parameters become views of one fp32 buffer (the bf16 copies of one bf16 buffer laid out
the same way), so clipping, fused Adam, the EMA's lerp and the bf16 refresh each run over one tensor instead of
hundreds of small ones, and the gradients of several processes are summed by one all-reduce of that buffer (so the
model is not wrapped in DDP: `reduces_grads`). `net`'s Parameter objects, names, shapes and strides stay, so
state_dicts and torch.compile see the same model. The optimizer's state is one tensor per kind;
`optimizer_state_to_params` / `optimizer_state_from_params` convert it to and from the per-parameter state_dict
that Adam over `net.parameters()` writes, so checkpoints do not depend on the setting. The numbers are those of the
per-parameter optimizer, except the clipping norm's summation order, and that a parameter without a gradient gets
a zero gradient where a per-parameter optimizer skips it (the UNet uses every parameter in every step).
"""
import copy

import torch
import torch.distributed as dist
import torch.nn as nn

# Every tensor starts at a multiple of ALIGN elements of its buffer (zeros between): a CUDA-graphed compiled model
# treats a parameter as a static input only if it is 16-byte aligned, and otherwise copies it on every call.
ALIGN = 16


def is_dense(t: torch.Tensor) -> bool:
    """True when `t` fills exactly `t.numel()` consecutive elements of its storage (contiguous or channels_last)."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def flatten_(tensors, dtype=None) -> torch.Tensor:
    """Point each tensor's `.data` at a slice of one new 1-D buffer, in the given order, each starting at a multiple
    of ALIGN elements, keeping its values (cast to `dtype` if given), shape and strides; returns the buffer."""
    tensors = list(tensors)
    for t in tensors:
        if not is_dense(t):
            raise ValueError(f'flatten_: a tensor of shape {tuple(t.shape)} and strides {t.stride()} is not dense')
    offsets, end = [], 0
    for t in tensors:
        offsets.append(-(-end // ALIGN) * ALIGN)
        end = offsets[-1] + t.numel()
    flat = torch.zeros(end, dtype=dtype or tensors[0].dtype, device=tensors[0].device)
    for t, offset in zip(tensors, offsets):
        view = flat.as_strided(t.shape, t.stride(), offset)
        view.copy_(t.detach())
        t.data = view
    return flat


def view_of(p: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """`p`'s part of a tensor laid out like the buffer `p` lives in (a gradient, an optimizer state)."""
    return flat.as_strided(p.shape, p.stride(), flat.storage_offset() + p.storage_offset())


def conv_weights_channels_last_(model: nn.Module) -> nn.Module:
    """Store every Conv2d weight of ``model`` channels_last, in place (same values, parameters and state_dict keys)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    return model


class FastWeights:
    """What the optimizer (`params`), the forward (`model`), the EMA and the step work on; see the module docstring."""

    def __init__(self, net: nn.Module, bf16_copy: bool = False, flat: bool = False):
        self.net, self.bf16_copy, self.flat = net, bf16_copy, flat
        self.index = list(net.parameters())                # the order a per-parameter optimizer holds them in
        self.master, self.copies = [], []                  # fp32 parameters of net that have a bf16 copy, and it
        self.model = net
        if bf16_copy:
            conv_weights_channels_last_(net)
            self.model = copy.deepcopy(net)
            for name, p in net.named_parameters():
                prefix, _, key = name.rpartition('.')
                holder = self.model.get_submodule(prefix)
                if isinstance(holder, (nn.Conv2d, nn.Linear)):
                    c = nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=p.requires_grad)
                    setattr(holder, key, c)
                    self.master.append(p)
                    self.copies.append(c)
                else:
                    setattr(holder, key, p)                # shared: GroupNorm's weight and bias
        self.params = self.index
        self._grads = None                                 # gradient buffers, made at the first step
        if flat:
            if not all(p.requires_grad for p in self.index):
                raise ValueError('FastWeights(flat=True): every parameter must require grad')
            copied = set(self.master)
            self.order = self.master + [p for p in self.index if p not in copied]     # the copied ones first
            self.param = nn.Parameter(flatten_(self.order))
            self.params = [self.param]
            copy_of = dict(zip(self.master, self.copies))
            self.sources = [copy_of.get(p, p) for p in self.order]                  # where each gradient arrives
            if bf16_copy:
                self.copy_buffer = flatten_(self.copies)                           # laid out as the fp32 buffer
                self.master_span = self.param.detach()[:self.copy_buffer.numel()]
                assert all(c.storage_offset() == p.storage_offset() and c.stride() == p.stride()
                           for c, p in zip(self.copies, self.master)), 'the bf16 copy is laid out unlike its master'

    @property
    def reduces_grads(self) -> bool:
        """True when `grads_to_params` sums the gradients over processes itself (do not wrap `model` in DDP)."""
        return self.flat

    @torch.no_grad()
    def refresh(self):
        """Copy the fp32 weights into the bf16 copy (after every optimizer step and every checkpoint load)."""
        if not self.bf16_copy:
            return
        if self.flat:
            self.copy_buffer.copy_(self.master_span)
        else:
            torch._foreach_copy_(self.copies, self.master)

    @torch.no_grad()
    def grads_to_params(self):
        """After the backward (of all micro-batches): put the gradients where the optimizer reads them, as fp32.

        bf16 copy: each copy's gradient into its fp32 parameter's `.grad`. Flat: every gradient into the flat
        buffer's `.grad` (zero for a parameter that got none), then its sum over processes divided by their number,
        as DDP averages. The sources' gradients are cleared, so the next backward starts from none.
        """
        if self.flat:
            self._gather_flat()
        elif self.bf16_copy:
            pairs = [(p, c) for p, c in zip(self.master, self.copies) if c.grad is not None]
            if self._grads is None:
                self._grads = {p: torch.empty_like(p) for p in self.master}
            if pairs:
                torch._foreach_copy_([self._grads[p] for p, _ in pairs], [c.grad for _, c in pairs])
            for p, c in pairs:
                p.grad, c.grad = self._grads[p], None

    def _gather_flat(self):
        if self._grads is None:   # the first call: nothing may have given a parameter new storage since __init__
            ptr = self.param.untyped_storage().data_ptr()
            if any(p.untyped_storage().data_ptr() != ptr for p in self.order):
                raise RuntimeError('FastWeights: a parameter no longer lives in the flat buffer (moved by .to() or '
                                   'replaced after FastWeights was made); make FastWeights after placing the model')
            grad = torch.zeros_like(self.param)
            views = [view_of(p, grad) for p in self.order]
            by_dtype = {}                  # one group per gradient dtype (the bf16 copies, the fp32 GroupNorm), so
            for src, view in zip(self.sources, views):      # that each step is one multi-tensor copy per group
                dst, srcs = by_dtype.setdefault(src.dtype, ([], []))
                dst.append(view)
                srcs.append(src)
            self._grads = (grad, list(by_dtype.values()))
        grad, groups = self._grads
        for views, sources in groups:
            grads = [s.grad for s in sources]
            if all(g is not None for g in grads):
                torch._foreach_copy_(views, grads)
            else:
                for view, g in zip(views, grads):
                    if g is None:
                        view.zero_()
                    else:
                        view.copy_(g)
            for s in sources:
                s.grad = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(grad)
            grad.div_(dist.get_world_size())
        self.param.grad = grad

    def attach_ema(self, ema):
        """Flat: lay the EMA's copy of the parameters out as the live buffer is, so an update is one lerp."""
        if not self.flat:
            return
        ema_of = dict(zip(ema.pairs[1], ema.pairs[0]))                  # live parameter -> its average
        averaged = [ema_of[p] for p in self.order]
        buffer = flatten_(averaged)
        assert all(a.storage_offset() == p.storage_offset() and a.stride() == p.stride()
                   for a, p in zip(averaged, self.order)), 'the EMA copy is laid out unlike the live parameters'
        ema.average([buffer], [self.param.detach()])

    def optimizer_state_to_params(self, state_dict: dict) -> dict:
        """The optimizer's state_dict as Adam over `net.parameters()` writes it (flat: per-parameter views)."""
        if not self.flat:
            return state_dict
        (group,) = state_dict['param_groups']
        flat = state_dict['state'].get(group['params'][0], {})
        state = {}
        if flat:
            for i, p in enumerate(self.index):
                state[i] = {k: v.clone() if k == 'step' else view_of(p, v) if torch.is_tensor(v) else v
                            for k, v in flat.items()}
        return {'state': state, 'param_groups': [dict(group, params=list(range(len(self.index))))]}

    def optimizer_state_from_params(self, state_dict: dict) -> dict:
        """A per-parameter optimizer state_dict (from a run of this model with any setting) as this optimizer's:
        flat, one tensor per kind (parameters without a state get zeros; `step` is the first parameter's); else each
        tensor in its parameter's memory layout, which fused Adam needs. ValueError if it does not fit the model."""
        groups = state_dict['param_groups']
        if len(groups) != 1 or len(groups[0]['params']) != len(self.index):
            raise ValueError(f'the optimizer state has {len(groups)} parameter group(s) with '
                             f'{[len(g["params"]) for g in groups]} parameters; this model has one group of '
                             f'{len(self.index)}')
        states = [state_dict['state'].get(i) for i in groups[0]['params']]
        for p, s in zip(self.index, states):
            for v in (s or {}).values():
                if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape:
                    raise ValueError(f'a state of shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)}')
        if not self.flat:
            layout = lambda p, v: torch.empty_like(p, dtype=v.dtype).copy_(v) if v.stride() != p.stride() else v
            state = {i: {k: layout(p, v) if torch.is_tensor(v) and v.dim() > 0 else v for k, v in s.items()}
                     for i, p, s in zip(groups[0]['params'], self.index, states) if s}
            return {'state': state, 'param_groups': groups}
        flat = {}
        present = [(p, s) for p, s in zip(self.index, states) if s]
        if present:
            for key, value in present[0][1].items():
                if key == 'step' or not torch.is_tensor(value):
                    flat[key] = value
                    continue
                buf = torch.zeros(self.param.numel(), dtype=value.dtype, device=value.device)
                for p, s in present:
                    view_of(p, buf).copy_(s[key])
                flat[key] = buf
        return {'state': {0: flat} if flat else {}, 'param_groups': [dict(groups[0], params=[0])]}
