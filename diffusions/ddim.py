"""DDIM sampling (Song, Meng, Ermon 2021) on the tables of a (possibly respaced) DDPM.

One step from chain index i to i-1 (ᾱ = alphas_cumprod[i], ᾱ' = alphas_cumprod_prev[i], so ᾱ' = 1 at i = 0):

    x0, ε  = the network's prediction at x_i (eps re-derived from the clipped x0 when clip_denoised)
    σ_i    = η √((1-ᾱ')/(1-ᾱ)) √(1 - ᾱ/ᾱ')                                    (eq. 16)
    x_{i-1} = √ᾱ' x0 + √(1-ᾱ'-σ_i²) ε + σ_i z,   z ~ N(0, I)                  (eq. 12)

η = 0 is the deterministic DDIM sampler (an Euler step of the probability-flow ODE in the variables
x/√ᾱ, √(1-ᾱ)/√ᾱ); η = 1 gives σ_i² = β̃_i, the DDPM posterior variance (fixed_small). The last step
(i = 0, ᾱ' = 1) returns x0 itself.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .ddpm import DDPM, Model, Sampler


class DDIM(Sampler):
    """DDIM sampler sharing the coefficient table of `ddpm` (its objective, clipping and timesteps).

    Args:
        ddpm: a DDPM, usually respaced with `from_config(..., skip_type=, skip_steps=)`.
        eta: the noise scale η ≥ 0 (0: deterministic, 1: ≈ DDPM with fixed_small variance).
    """

    def __init__(self, ddpm: DDPM, eta: float = 0.0):
        if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"DDIM eta must be a number >= 0 (0: deterministic, 1: like DDPM), got {eta!r}")
        self.ddpm, self.eta = ddpm, float(eta)
        self.num_steps = ddpm.num_steps
        abar = ddpm.table['alphas_cumprod']                   # (S,) float64
        abar_prev = ddpm.table['alphas_cumprod_prev']         # (S,), 1 at i = 0
        sigma = self.eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).clamp(min=0).sqrt()
        # plain float64 scalars per step: one step uses one chain index for the whole batch
        self.sqrt_abar_prev = abar_prev.sqrt().tolist()
        self.dir_coef = (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt().tolist()   # √(1-ᾱ'-σ²)
        self.sigma = sigma.tolist()

    @torch.no_grad()
    def step(self, model: Model, x_t: Tensor, i: int, generator: Optional[torch.Generator] = None
             ) -> Tuple[Tensor, Tensor]:
        """x_i -> x_{i-1}; returns (x_{i-1}, x̂0), both shaped like x_t."""
        d = self.ddpm
        ii = torch.full((x_t.shape[0],), i, device=x_t.device, dtype=torch.long)
        x0, eps = d.predict(model, x_t, ii)
        if d.clip_denoised:   # keep (x0, ε) consistent with x_t after clipping x0 (as guided-diffusion does)
            eps = (d.coef('sqrt_recip_alphas_cumprod', ii, x_t) * x_t - x0) / d.coef('sqrt_recipm1_alphas_cumprod', ii, x_t)
        x = self.sqrt_abar_prev[i] * x0 + self.dir_coef[i] * eps
        if self.sigma[i] > 0:
            x = x + self.sigma[i] * torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return x, x0
