"""torch.compile for training and for sampling: the inductor options in one place, per compiled model.

Nothing here leaves a process-wide switch set: each option goes to `torch.compile(model, options=...)`, which
applies it to that model's graphs only (forward and backward). Measured reasons for each: docs/benchmarks.md.

- `force_layout_opt` (training): inductor runs a convolution-heavy graph channels_last unless a heuristic says
  no, and for this UNet's training graph it says no (the up path's convolutions halve their channels), so cuDNN
  would convert NCHW <-> NHWC around every convolution. Forced on, the graph's convolutions run channels_last, and
  their backward gets dense channels_last operands (conv_backward_layout.py) instead of cuDNN copying them.
- `freeze` (sampling a fixed model): the weights become constants of the graph, so their bf16 casts and layout
  changes run once instead of every forward. The compiled model does not see later changes to the weights. Dynamo
  reads this one from the process-wide config when it traces, so compile_for_sampling also switches it on around
  each call of the compiled model (FrozenCall), and only then.
- `tune`: inductor's coordinate-descent tuning of its Triton kernels' launch settings: minutes more compiling
  (cached on disk afterwards), a few percent faster kernels.
- Sampling also computes GroupNorm from per-channel statistics (`ChannelStatsGroupNorm`).
"""
import torch
import torch.nn as nn

from . import conv_backward_layout

COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def inductor_options(mode: str, force_layout_opt=False, freeze=False, tune=False) -> dict:
    """The options of `torch.compile(mode=mode)` plus this repo's switches, for `torch.compile(options=...)`."""
    from torch._inductor import list_mode_options
    options = dict(list_mode_options(mode))
    if force_layout_opt:
        options['force_layout_optimization'] = True
        options['post_grad_custom_post_pass'] = conv_backward_layout.install()   # marks the lowering in the cache key
    if freeze:
        options['freezing'] = True
    if tune:
        options['coordinate_descent_tuning'] = True
    return options


def compile_for_training(model: nn.Module, mode: str, force_layout_opt=True, tune=False):
    """`model` compiled for training steps (see the module docstring for the switches)."""
    return torch.compile(model, options=inductor_options(mode, force_layout_opt=force_layout_opt, tune=tune))


def compile_for_sampling(model: nn.Module, mode: str, tune=False):
    """`model` (fixed weights, no gradients) compiled for sampling: per-channel GroupNorm statistics, frozen weights.

    The model's GroupNorm modules are swapped in place for ChannelStatsGroupNorm (same parameters and state_dict).
    Returns a FrozenCall of the compiled model: call it as the model, under torch.no_grad().
    """
    for m in model.modules():
        if type(m) is nn.GroupNorm:
            m.__class__ = ChannelStatsGroupNorm
    return FrozenCall(torch.compile(model, options=inductor_options(mode, freeze=True, tune=tune)))


class FrozenCall:
    """Calls a model compiled with `freezing` with inductor's process-wide `freezing` on for the call, restored after.

    Whether the weights become constants is decided by dynamo when it traces (at the first call, or a recompile),
    from the process-wide switch (torch._dynamo.utils.is_parameter_freezing); `torch.compile(options=...)` reaches
    inductor only. With the option alone the weights stayed graph inputs, cast to bf16 in every forward.
    """

    def __init__(self, compiled):
        import torch._inductor.config as inductor_config        # imported here, not on every call
        self.compiled, self._config = compiled, inductor_config

    def __call__(self, *args, **kwargs):
        config = self._config
        before, config.freezing = config.freezing, True          # (cheaper on the host than config.patch)
        try:
            return self.compiled(*args, **kwargs)
        finally:
            config.freezing = before


class ChannelStatsGroupNorm(nn.GroupNorm):
    """nn.GroupNorm of x (B, C, H, W) computed from per-channel statistics: same parameters and values (to rounding).

    Each channel's mean m_c and variance v_c over H*W come from one reduction with a (B, C) output; the groups'
    statistics follow exactly by the law of total variance (equal group sizes):
        mean_g = avg_c m_c,    var_g = avg_c v_c + avg_c (m_c - mean_g)^2      (c over the group's channels)
    and y = x * scale + shift with per-(sample, channel) scale = w_c / sqrt(var_g + eps), shift = b_c - mean_g *
    scale. Statistics in float32 at least, y in x's dtype. Why: in the channels_last layout inductor picks for
    sampling, a group's elements are C/groups-wide runs strided by C, which a reduction per group reads poorly; a
    reduction per channel reads contiguous rows of C. Measured faster in the compiled sampling forward; in the
    compiled training step it measured slower, so training keeps nn.GroupNorm.
    """

    def forward(self, x):
        if x.dim() != 4:
            return super().forward(x)
        B, C, H, W = x.shape
        G = self.num_groups
        acc = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(acc)
        var_c, mean_c = torch.var_mean(xf, dim=(2, 3), correction=0)             # (B, C) each
        mean_c, var_c = mean_c.view(B, G, C // G), var_c.view(B, G, C // G)
        mean_g = mean_c.mean(-1, keepdim=True)                                    # (B, G, 1)
        var_g = var_c.mean(-1, keepdim=True) + (mean_c - mean_g).square().mean(-1, keepdim=True)
        scale = torch.rsqrt(var_g + self.eps).expand(B, G, C // G)
        if self.weight is not None:
            scale = scale * self.weight.to(acc).view(G, C // G)
        shift = -mean_g * scale
        if self.bias is not None:
            shift = shift + self.bias.to(acc).view(G, C // G)
        return (xf * scale.reshape(B, C, 1, 1) + shift.reshape(B, C, 1, 1)).to(x.dtype)
