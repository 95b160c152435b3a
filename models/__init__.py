"""Networks: the DDPM UNet, an EMA of a model's weights and a bf16 copy of them. Nothing here knows about diffusion."""
import inspect

import torch

from utils.errors import UserError

from . import conv_backward_layout
from .bf16_weights import BF16Weights
from .ema import EMA
from .flat_params import FlatParams
from .unet import UNet

UNET_PARAMS = list(inspect.signature(UNet.__init__).parameters)[1:]  # all but self


def build_model(model_cfg: dict) -> UNet:
    """Build the UNet from a config's ``model`` block: ``UNet(**model_cfg['params'])``.

    Every UNet argument must be given, and nothing else. Bad input raises a one-line UserError.
    """
    params = model_cfg.get("params") if isinstance(model_cfg, dict) else None
    if not isinstance(params, dict):
        raise UserError(f"config: model.params must be a mapping with keys {', '.join(UNET_PARAMS)}")
    for key in params:
        if key not in UNET_PARAMS:
            raise UserError(f"config: unknown key model.params.{key}; valid keys: {', '.join(UNET_PARAMS)}")
    for key in UNET_PARAMS:
        if key not in params:
            raise UserError(f"config: missing key model.params.{key}; valid keys: {', '.join(UNET_PARAMS)}")
    check_params(**params)
    p = dict(params, dim_mults=tuple(params["dim_mults"]), use_attn=tuple(params["use_attn"]))
    return UNet(**p)


def compile_model(model, mode, force_layout_opt=False, freeze=False, tune=False):
    """torch.compile(model, mode=mode), with three of inductor's process-wide switches (model None: the switches only).

    `force_layout_opt`: the training graph's convolutions run channels_last. Inductor converts a convolution-heavy
    graph to channels_last internally unless a heuristic says no; for this UNet it says no for the training graph
    (the up path's convolutions halve their channels), and cuDNN then converts NCHW <-> NHWC around every
    convolution (bench/NOTES.md, attempt 4: 21% of a step's GPU time; attempt 6: forcing it made the CIFAR-10 step
    17% faster on an H200). It also gives the backward's convolutions dense channels_last operands
    (models/conv_backward_layout.py: the kernels producing them write that layout instead of cuDNN copying them).
    `freeze`: inference only (sampling a fixed model): the weights become constants of the compiled graph, so their
    bf16 casts and layout changes run once instead of every forward (attempt 8: +3% sampling on an H100). The
    compiled model does not see later changes to the weights.
    `tune`: inductor's coordinate-descent tuning of its Triton kernels' launch settings, for everything compiled
    after it: minutes more compiling (cached on disk afterwards), a few percent faster kernels (bench/NOTES.md:
    attempt 6, the CIFAR-10 training step +3% on an H200; attempts 10-11, the sampling chain +2.6% and +1.6% on an
    H100).
    """
    import torch._inductor.config as inductor_config
    if force_layout_opt:
        inductor_config.force_layout_optimization = True
        conv_backward_layout.install()
    if freeze:
        inductor_config.freezing = True
    if tune:
        inductor_config.coordinate_descent_tuning = True
    return None if model is None else torch.compile(model, mode=mode)


def check_params(in_channels, out_channels, dim, dim_mults, use_attn, num_res_blocks, groups, dropout):
    """Raise a one-line UserError if the UNet arguments do not make a valid network."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    for name, v in [("in_channels", in_channels), ("out_channels", out_channels), ("dim", dim),
                    ("groups", groups)]:
        if not is_int(v) or v < 1:
            raise UserError(f"config: model.params.{name} must be a positive integer, got {v!r}")
    if not is_int(num_res_blocks) or num_res_blocks < 1:
        raise UserError(f"config: model.params.num_res_blocks must be a positive integer, got {num_res_blocks!r}")
    if not isinstance(dim_mults, (list, tuple)) or not dim_mults or not all(is_int(m) and m >= 1 for m in dim_mults):
        raise UserError(f"config: model.params.dim_mults must be a non-empty list of positive integers, got {dim_mults!r}")
    if not isinstance(use_attn, (list, tuple)) or not all(isinstance(a, bool) for a in use_attn):
        raise UserError(f"config: model.params.use_attn must be a list of true/false, got {use_attn!r}")
    if len(use_attn) != len(dim_mults):
        raise UserError(f"config: model.params.use_attn has {len(use_attn)} entries but dim_mults has "
                        f"{len(dim_mults)}; give one per level")
    for ch in [dim] + [dim * m for m in dim_mults]:
        if ch % groups != 0:
            raise UserError(f"config: model.params.groups={groups} does not divide the channel count {ch} "
                            f"(dim={dim}, dim_mults={list(dim_mults)})")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise UserError(f"config: model.params.dropout must be a number in [0, 1), got {dropout!r}")
