"""Pick a sampler by name. Every sampler has `sample_loop(model, x_T, generator)` yielding (x, x̂0) per step.

    ddpm          DDPM ancestral sampling (Ho et al. 2020), fixed_large or fixed_small variance
    ddim          DDIM (Song et al. 2021), η = 0 deterministic, η = 1 ≈ DDPM with fixed_small
    dpm_solver++  DPM-Solver++(2M) (Lu et al. 2022), deterministic, for 10–20 steps
"""
from typing import Optional

from utils.errors import UserError
from .ddim import DDIM
from .ddpm import DDPM
from .dpm_solver import DPMSolverPP

SAMPLERS = ('ddpm', 'ddim', 'dpm_solver++')


def make_sampler(name: str, ddpm: DDPM, eta: Optional[float] = None):
    """The sampler `name` on the (possibly respaced) chain of `ddpm`; `eta` is DDIM's η (default 0)."""
    if name == 'ddpm':
        return ddpm
    if name == 'ddim':
        return DDIM(ddpm, 0.0 if eta is None else eta)
    if name == 'dpm_solver++':
        return DPMSolverPP(ddpm)
    raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
