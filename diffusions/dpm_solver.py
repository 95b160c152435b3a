"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a multistep ODE solver in data prediction.

With α_i = √ᾱ_i, σ_i = √(1-ᾱ_i) and the log-SNR λ_i = log(α_i / σ_i) of chain index i of a (possibly
respaced) DDPM, one step from i to j = i-1 with h = λ_j − λ_i is

    x_j = (σ_j / σ_i) x_i − α_j (e^{−h} − 1) D_i,
    D_i = (1 + 1/(2r)) x̂0_i − 1/(2r) x̂0_{i+1},  r = h_prev / h   (second order, multistep),
    D_i = x̂0_i                                            (first order: the first step, and the step into i = 0).

The chain visits i = S-1 … 0 with one network call each (S calls in all); the final step goes from i = 0
to clean data (σ = 0, λ = ∞), where the first-order update is exactly x̂0_0, so the sample is the
network's data prediction at the last timestep (`denoise to zero`, as diffusers'
`final_sigmas_type='zero'`). The step into i = 0 is first order (`lower_order_final` of the reference
code): λ jumps most there (λ_0 − λ_1 ≫ λ_1 − λ_2 for uniform spacing on the linear schedule), and the
multistep extrapolation with r ≪ 1 overshoots. The sampler is deterministic: x_T is its only randomness.
"""
import math
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from .ddpm import DDPM, Model, Sampler
from .schedules import log_snr


class DPMSolverPP(Sampler):
    """DPM-Solver++(2M) sharing the coefficient table of `ddpm` (its objective, clipping and timesteps).

    Args:
        ddpm: a DDPM, usually respaced with `from_config(..., skip_type=, skip_steps=)`; 10–20 steps
            is the solver's intended range.
    """

    def __init__(self, ddpm: DDPM):
        self.ddpm = ddpm
        self.num_steps = ddpm.num_steps
        abar = ddpm.table['alphas_cumprod']                                 # (S,) float64
        self.alpha = abar.sqrt().tolist()
        self.sigma = (1 - abar).sqrt().tolist()
        self.lam = log_snr(abar).tolist()                                   # λ = log(√ᾱ / √(1-ᾱ))

    @torch.no_grad()
    def sample_loop(self, model: Model, x_T: Tensor, generator: Optional[torch.Generator] = None
                    ) -> Iterator[Tuple[Tensor, Tensor]]:
        """Run the solver from x_T; yields (x_{i-1}, x̂0_i) after each of the S network calls.

        The last yield is (x̂0_0, x̂0_0): the sample. `generator` is unused (the solver draws no noise);
        it is accepted so every sampler has the same signature.
        """
        d = self.ddpm
        x, prev_x0, h_prev = x_T, None, None
        for i in reversed(range(self.num_steps)):
            ii = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            x0, _ = d.predict(model, x, ii)
            if i == 0:                                   # final first-order step to σ = 0: x = x̂0
                yield x0, x0
                return
            j = i - 1
            h = self.lam[j] - self.lam[i]
            if prev_x0 is None or j == 0:                # first step (no history) and last transition: first order
                D = x0
            else:
                c = 1 / (2 * (h_prev / h))               # 1 / (2r)
                D = (1 + c) * x0 - c * prev_x0
            x = (self.sigma[j] / self.sigma[i]) * x - (self.alpha[j] * math.expm1(-h)) * D
            prev_x0, h_prev = x0, h
            yield x, x0
