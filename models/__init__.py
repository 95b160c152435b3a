"""Networks: the DDPM UNet and an EMA of a model's weights; the opt-in speed layer in models/fast.

Nothing here knows about diffusion.
"""
import inspect

from utils.errors import UserError

from .ema import EMA
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
