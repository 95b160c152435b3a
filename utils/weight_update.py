"""The weight update after each backward: gradient clipping, Adam, the bf16 copy's refresh and the EMA.

Eager, these are a few multi-tensor launches each, over the model's ~300 parameter tensors (0.72 ms of GPU time in
32 launches per MNIST-config step on an H100, bench/NOTES.md attempt 12). With a compile mode, clipping, Adam,
the refresh and the EMA are traced by torch.compile as one function: inductor fuses the per-tensor arithmetic of
all four into a few kernels, and with mode 'reduce-overhead' replays them as one CUDA graph. What changes from step
to step enters as 0-d device tensors (Adam's learning rate, the EMA's weight), so nothing recompiles or syncs.
"""
from typing import Callable, Optional

import torch

from models.ema import get_tensor, unwrap


def make_adam(params, lr: float, betas, weight_decay: float, device: torch.device, compiled: bool):
    """Adam for `WeightUpdate`: fused on a GPU; for a compiled update, foreach and capturable with the learning rate
    a 0-d device tensor (LR schedulers write into it)."""
    if compiled:
        return torch.optim.Adam(params, lr=torch.tensor(lr, device=device), betas=betas, weight_decay=weight_decay,
                                foreach=True, capturable=True)
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=device.type == 'cuda')


def adam_settings(optimizer) -> list:
    """What `restore_adam_settings` puts back: per param group, its implementation flags and its learning rate."""
    optimizer = getattr(optimizer, 'optimizer', optimizer)          # under accelerate's wrapper
    return [{k: g[k] for k in ('lr', 'foreach', 'fused', 'capturable')} for g in optimizer.param_groups]


def restore_adam_settings(optimizer, settings: list):
    """After optimizer.load_state_dict: give each param group back this run's implementation flags and learning-rate
    object (a checkpoint carries those of the run that wrote it, eager or compiled), with the loaded learning rate
    as its value; put each `step` count where this run's Adam keeps it (on the parameter's device for fused or
    capturable, else on the CPU)."""
    optimizer = getattr(optimizer, 'optimizer', optimizer)
    for group, own in zip(optimizer.param_groups, settings):
        loaded = float(group['lr'])
        lr = own['lr'].fill_(loaded) if torch.is_tensor(own['lr']) else loaded
        group.update(own, lr=lr)
        if torch.is_tensor(group.get('initial_lr')):
            group['initial_lr'] = float(group['initial_lr'])
        on_device = group['capturable'] or group['fused']
        for p in group['params']:
            state = optimizer.state.get(p, {})
            if torch.is_tensor(state.get('step')):
                state['step'] = state['step'].to(device=p.device if on_device else 'cpu', dtype=torch.float32)


class WeightUpdate:
    """update() after each backward: clip the gradients, step the optimizer, refresh the bf16 copy, update the EMA;
    returns the gradient norm before clipping (a 0-d device tensor).

    net: the fp32 model whose parameters the optimizer holds. optimizer: from `make_adam` (its `compiled` matching
    whether compile_mode is given); may be accelerate's wrapper. ema: models.EMA of net. bf16_weights:
    models.BF16Weights or None. clip: the eager clipping function (accelerate's, which unscales fp16 gradients first).
    compile_mode: None (eager) or a torch.compile mode ('default', 'reduce-overhead').
    The compiled update clips with torch.nn.utils.clip_grad_norm_ itself (no fp16 loss scaler) and keeps every
    gradient in a buffer of its own that lives across steps (a CUDA graph reads fixed addresses).
    """

    def __init__(self, net, optimizer, ema, grad_clip: float, bf16_weights=None,
                 clip: Optional[Callable] = None, compile_mode: Optional[str] = None):
        self.net, self.optimizer, self.ema, self.grad_clip = net, optimizer, ema, grad_clip
        self.bf16_weights = bf16_weights
        net = unwrap(net)
        self.params = list(net.parameters())
        self.clip = clip or (lambda params, max_norm: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True))
        self.compiled = None
        if compile_mode is not None:
            if ema.lerp_buffers or ema.copy_names:
                raise ValueError('the compiled weight update averages parameters only; this model has buffers')
            self.ema_weight = torch.zeros((), device=self.params[0].device)
            self.grads = [torch.empty_like(p) for p in self.params]
            if bf16_weights is not None:          # it writes the copy's gradients straight into these buffers
                bf16_weights.grad_buffers.update(zip(self.params, self.grads))
            self.live = [get_tensor(net, n) for n in ema.lerp_params]
            self.compiled = torch.compile(self._update, mode=compile_mode)

    @torch.no_grad()
    def _update(self):
        """Clip, Adam, refresh, EMA: the traced function (grads already in self.grads)."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        getattr(self.optimizer, 'optimizer', self.optimizer).step()      # the torch optimizer under accelerate's
        if self.bf16_weights is not None:
            torch._foreach_copy_(self.bf16_weights.copies, self.bf16_weights.master)
        delta = torch._foreach_sub(self.live, self.ema.ema_params)      # ema += w * (live - ema)
        torch._foreach_mul_(delta, self.ema_weight)
        torch._foreach_add_(self.ema.ema_params, delta)
        return grad_norm

    def __call__(self) -> torch.Tensor:
        if self.bf16_weights is not None:
            self.bf16_weights.grads_to_master()
        if self.compiled is None:
            grad_norm = self.clip(self.params, self.grad_clip)
            self.optimizer.step()
            if self.bf16_weights is not None:
                self.bf16_weights.refresh()
            self.ema.update(self.net)
        else:
            moved = [(p, b) for p, b in zip(self.params, self.grads) if p.grad is not None and p.grad is not b]
            if moved:
                torch._foreach_copy_([b for _, b in moved], [p.grad for p, _ in moved])
                for p, b in moved:
                    p.grad = b
            self.ema_weight.fill_(1.0 - self.ema.current_decay())
            grad_norm = self.compiled().clone()      # a CUDA graph's output is overwritten by its next replay
            self.ema.num_updates += 1
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm
