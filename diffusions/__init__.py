"""Diffusion math: schedules, the DDPM tables, forward/reverse processes, samplers and the variational bound in
bits/dim (knows nothing of data).

config.py is the edge: config dicts and names in, math objects out, bad values as one-line UserErrors.
"""
from .schedules import make_betas, skip_sequence, respace_betas, BETA_SCHEDULES, SKIP_TYPES
from .ddpm import DDPM, OBJECTIVES, VAR_TYPES
from .ddim import DDIM
from .dpm_solver import DPMSolverPP
from .likelihood import discretized_gaussian_log_likelihood, normal_kl, variational_bound, variational_bounds
from .config import DEFAULT_SKIP_TYPES, SAMPLERS, default_skip_type, from_config, make_sampler
