"""Beta schedules and skip-step timestep sequences, all in float64.

Notation follows Ho et al. (2020): betas β_t, ᾱ_t = Π_{s<=t} (1 - β_s), with t = 0 … T-1 indexing the
chain (the paper's t = 1 … T).
"""
import math
from typing import Optional

import torch


BETA_SCHEDULES = ('linear', 'quad', 'const', 'cosine', 'sigmoid')
SKIP_TYPES = ('uniform', 'uniform2', 'quad', 'trailing', 'logsnr')


def cosine_alphas_cumprod(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """ᾱ(t) of Nichol & Dhariwal (2021, eq. 17) at continuous t in [0, 1], normalised so ᾱ(0) = 1."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def make_betas(schedule: str, total_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_0 … β_{T-1} as a float64 tensor of shape (T,).

    linear: evenly spaced in [beta_start, beta_end] (the paper's 1e-4 … 0.02).
    quad: evenly spaced in sqrt-space, then squared.
    const: beta_end everywhere.
    cosine: β_t = 1 - ᾱ((t+1)/T) / ᾱ(t/T) from Nichol & Dhariwal's ᾱ, capped at 0.999 (beta_start/end unused).
    sigmoid: sigmoid(linspace(-6, 6, T)) rescaled to [beta_start, beta_end] (as in diffusion_tf).
    """
    T = total_steps
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"diffusion.total_steps must be a positive integer, got {T!r}")
    if schedule in ('linear', 'quad', 'sigmoid', 'const'):
        used = {'beta_end': beta_end} if schedule == 'const' else {'beta_start': beta_start, 'beta_end': beta_end}
        for name, value in used.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
                raise ValueError(f"diffusion.{name} must be a number in (0, 1), got {value!r}")
        if schedule != 'const' and beta_start > beta_end:
            raise ValueError(f"diffusion.beta_start {beta_start} is above beta_end {beta_end}; the noise must grow "
                             f"along the chain (the paper: 0.0001 to 0.02)")
    f64 = torch.float64
    if schedule == 'linear':
        return torch.linspace(beta_start, beta_end, T, dtype=f64)
    if schedule == 'quad':
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=f64) ** 2
    if schedule == 'const':
        return torch.full((T,), beta_end, dtype=f64)
    if schedule == 'cosine':
        t = torch.arange(T + 1, dtype=f64) / T
        abar = cosine_alphas_cumprod(t)
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    if schedule == 'sigmoid':
        return torch.sigmoid(torch.linspace(-6, 6, T, dtype=f64)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"unknown diffusion.beta_schedule {schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}")


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """λ = ½ log(ᾱ / (1 - ᾱ)) = log(√ᾱ / √(1-ᾱ)), elementwise, in alphas_cumprod's dtype (float64 tables)."""
    return 0.5 * (alphas_cumprod.log() - torch.log1p(-alphas_cumprod))


def evenly_spaced(S: int, T: int) -> list:
    """S integers from 0 to T-1 as evenly spaced as rounding allows: improved-diffusion's `space_timesteps`
    for one section (a stride of (T-1)/(S-1), accumulated and rounded)."""
    if S == 1:
        return [0]
    stride, cur, steps = (T - 1) / (S - 1), 0.0, []
    for _ in range(S):
        steps.append(round(cur))
        cur += stride
    return steps


def skip_sequence(skip_type: str, skip_steps: int, total_steps: int,
                  alphas_cumprod: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The S timesteps (ascending, int64, shape (S,)) that a skip-step sampler visits.

    uniform: every (T/S)-th step from 0: 0, k, 2k, … when S divides T (DDIM's 'uniform'; the chain starts
        at T - T/S); otherwise S steps evenly spaced from 0 to T-1 (improved-diffusion's spacing).
    uniform2: S points of linspace(0, T-1) rounded, so the chain always starts at t = T-1.
    quad: floor(linspace(0, sqrt(0.8 T), S) ** 2) (DDIM's 'quad'); where flooring repeats a step near t = 0,
        later steps are pushed up by one (t_k = max(t_k, t_{k-1} + 1)) so the S steps stay distinct.
    trailing: round(T - k T/S) - 1 for k = 0 … S-1: starts at T-1 and keeps the stride T/S down to
        T/S - 1 (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps Are Flawed", table 2).
    logsnr: uniform in the log-SNR λ_t = ½ log(ᾱ_t / (1 - ᾱ_t)) from λ_{T-1} to λ_0 (as DPM-Solver's code
        spaces its steps), each λ mapped to the nearest integer t, repeats pushed up as in quad (and down
        again below T-1 when S is close to T); needs the schedule's `alphas_cumprod` (T,).
    """
    T, S = total_steps, skip_steps
    if not isinstance(S, int) or isinstance(S, bool) or not 1 <= S <= T:
        raise ValueError(f"skip_steps must be an integer in [1, {T}] (the diffusion's total_steps), got {S!r}")
    if skip_type == 'uniform':
        seq = torch.arange(S, dtype=torch.int64) * (T // S) if T % S == 0 else torch.tensor(evenly_spaced(S, T))
    elif skip_type == 'uniform2':
        seq = torch.linspace(0, T - 1, S, dtype=torch.float64).round().long()
    elif skip_type == 'quad':
        seq = _distinct((torch.linspace(0, math.sqrt(T * 0.8), S, dtype=torch.float64) ** 2).floor().long())
    elif skip_type == 'trailing':
        seq = torch.tensor([round(T - k * T / S) - 1 for k in reversed(range(S))], dtype=torch.int64)
    elif skip_type == 'logsnr':
        if alphas_cumprod is None or len(alphas_cumprod) != T:
            raise ValueError(f"skip_type 'logsnr' needs the schedule's alphas_cumprod of length T={T}")
        lam = log_snr(alphas_cumprod.to(torch.float64))                     # (T,), decreasing in t
        targets = torch.linspace(lam[-1].item(), lam[0].item(), S, dtype=torch.float64)   # ascending t order
        seq = (lam[None, :] - targets[:, None]).abs().argmin(1).sort().values
        seq = _distinct(seq, top=T - 1)
    else:
        raise ValueError(f"unknown skip_type {skip_type!r}; choose one of {', '.join(SKIP_TYPES)}")
    if len(torch.unique(seq)) != S or seq[-1] >= T or seq[0] < 0:
        raise ValueError(f"skip_type {skip_type!r} cannot place {S} distinct steps in T={T}; "
                        f"use fewer skip_steps or skip_type uniform")
    return seq


def _distinct(seq: torch.Tensor, top: Optional[int] = None) -> torch.Tensor:
    """An ascending int64 sequence with repeats pushed up by one (t_k = max(t_k, t_{k-1} + 1)); with `top`,
    then pushed down where that passed it (t_k = min(t_k, t_{k+1} - 1), the last step at most `top`)."""
    seq = seq.clone()
    for k in range(1, len(seq)):
        seq[k] = max(seq[k], seq[k - 1] + 1)
    if top is not None:
        seq[-1] = min(seq[-1], top)
        for k in reversed(range(len(seq) - 1)):
            seq[k] = min(seq[k], seq[k + 1] - 1)
    return seq


def respace_betas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Betas of the shorter chain that visits `timesteps`: β'_i = 1 - ᾱ_{t_i} / ᾱ_{t_{i-1}} (ᾱ_{t_{-1}} = 1).

    The respaced chain has exactly the marginals ᾱ_{t_i} of the original one, so fixed-large (β') and
    fixed-small (the posterior variance of the respaced chain) stay consistent (Nichol & Dhariwal, sec. 4).
    """
    abar = alphas_cumprod[timesteps]
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    return 1 - abar / abar_prev
