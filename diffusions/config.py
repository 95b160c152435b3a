"""The edge of diffusions/: a config's `diffusion` block and the command line's names -> the math objects.

    diffusion = from_config(cfg['diffusion'], skip_type='uniform', skip_steps=50)
    sampler = make_sampler('ddim', diffusion, eta=0.0)

The math modules raise ValueError on impossible values; here they become one-line UserErrors for the scripts.
Every sampler has `sample_loop(model, x_T, generator)` yielding (x, x̂0) per step, and `sample(...)`:

    ddpm          DDPM ancestral sampling (Ho et al. 2020), fixed_large or fixed_small variance
    ddim          DDIM (Song et al. 2021), η = 0 deterministic, η = 1 ≈ DDPM with fixed_small
    dpm_solver++  DPM-Solver++(2M) (Lu et al. 2022), deterministic, for 10–20 steps
"""
import contextlib
from typing import Optional

import torch

from utils.errors import UserError
from .ddim import DDIM
from .ddpm import DDPM
from .dpm_solver import DPMSolverPP
from .schedules import make_betas, respace_betas, skip_sequence

SAMPLERS = ('ddpm', 'ddim', 'dpm_solver++')
# The spacing a sampler uses when asked for fewer steps than T and none is named, chosen by FID at 10 and 20 steps
# (docs/sampling.md, Skip steps): DPM-Solver++ and DDIM on steps uniform in log-SNR, as DPM-Solver's own code
# spaces them; DDPM on the paper's uniform steps (no spacing measured better at both step counts).
DEFAULT_SKIP_TYPES = {'ddpm': 'uniform', 'ddim': 'logsnr', 'dpm_solver++': 'logsnr'}


def default_skip_type(sampler: str) -> str:
    """The spacing `sampler` takes when none is given (DEFAULT_SKIP_TYPES); an unknown name gets 'uniform' here
    and its one-line error from make_sampler."""
    return DEFAULT_SKIP_TYPES.get(sampler, 'uniform')


@contextlib.contextmanager
def _one_line():
    try:
        yield
    except ValueError as e:
        raise UserError(str(e)) from None


def from_config(cfg: dict, var_type: Optional[str] = None, skip_type: Optional[str] = None,
                skip_steps: Optional[int] = None) -> DDPM:
    """The DDPM of a config's `diffusion` block (`var_type` overrides its variance); `skip_type`/`skip_steps`
    respace the chain to those steps (schedules.skip_sequence)."""
    with _one_line():
        betas = make_betas(cfg['beta_schedule'], cfg['total_steps'], cfg['beta_start'], cfg['beta_end'])
        timesteps = None
        if skip_type is not None:
            alphas_cumprod = torch.cumprod(1 - betas, 0)
            timesteps = skip_sequence(skip_type, skip_steps, len(betas), alphas_cumprod)
            betas = respace_betas(alphas_cumprod, timesteps)
        return DDPM(betas, objective=cfg['objective'], var_type=var_type or cfg['var_type'],
                    clip_denoised=cfg.get('clip_denoised', True), timesteps=timesteps)


def make_sampler(name: str, ddpm: DDPM, eta: Optional[float] = None):
    """The sampler `name` on the (possibly respaced) chain of `ddpm`; `eta` is DDIM's η (default 0)."""
    with _one_line():
        if name == 'ddpm':
            return ddpm
        if name == 'ddim':
            return DDIM(ddpm, 0.0 if eta is None else eta)
        if name == 'dpm_solver++':
            return DPMSolverPP(ddpm)
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
