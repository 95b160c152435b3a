"""Diffusion math: schedules, the DDPM tables, forward/reverse processes and samplers."""
from .schedules import make_betas, skip_sequence, respace_betas, BETA_SCHEDULES, SKIP_TYPES
from .ddpm import DDPM, OBJECTIVES, VAR_TYPES
from .ddim import DDIM
from .dpm_solver import DPMSolverPP
from .samplers import SAMPLERS, make_sampler
