"""A yardstick for samplers: data whose optimal denoiser is known in closed form, and exact output moments.

For x0 ~ N(mu, s²) per pixel and x_t = √ᾱ x0 + √(1-ᾱ) ε, the optimal (posterior-mean) predictions are

    ε*(x_t, t)  = √(1-ᾱ) (x_t − √ᾱ mu) / (ᾱ s² + 1 − ᾱ)
    x0*(x_t, t) = mu + √ᾱ s² (x_t − √ᾱ mu) / (ᾱ s² + 1 − ᾱ)
    v*(x_t, t)  = √ᾱ ε* − √(1-ᾱ) x0*

A correct sampler driven by this model returns samples ~ N(mu, s²) up to its discretisation error. The model
is linear in x_t, so with clipping off every sampler is an affine map of x_T and its step noises, and the mean
and variance of its output propagate exactly (`exact_output_moments`). Used by tests/test_samplers.py,
tests/test_likelihood.py and bench/sampler_accuracy.py (the tables of docs/sampling.md).
"""
from typing import Tuple

import torch

from .dpm_solver import DPMSolverPP


def gaussian_denoiser(alphas_cumprod: torch.Tensor, mu: float, s: float, objective: str = 'pred_eps'):
    """The optimal network for x0 ~ N(mu, s²), as a model (x_t, t) -> prediction of `objective`, where t (B,)
    are original timesteps indexing `alphas_cumprod` (T,) of the full schedule."""
    def model(x, t):
        a = alphas_cumprod[t].reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)
        den = a * s * s + 1 - a
        eps = (1 - a).sqrt() * (x - a.sqrt() * mu) / den
        x0 = mu + a.sqrt() * s * s * (x - a.sqrt() * mu) / den
        return {'pred_eps': eps, 'pred_x0': x0, 'pred_v': a.sqrt() * eps - (1 - a).sqrt() * x0}[objective]
    return model


def exact_output_moments(sampler, model, mean: float = 0.0, var: float = 1.0) -> Tuple[float, float]:
    """Mean and variance of the sampler's output for x_T ~ N(mean, var), exactly (float64, clipping off).

    Every step is x_{i-1} = A_i x_i + c_i + σ_i z. A_i, c_i and σ_i are read off the sampler's own step at
    x_i ∈ {0, 1, 0} with a generator seeded by i, whose draws z are reproduced here, so
    Var_{i-1} = A_i² Var_i + σ_i². DPM-Solver++ (multistep, deterministic) is read off as one affine map of x_T.
    """
    probe = torch.tensor([[0.0], [1.0], [0.0]], dtype=torch.float64)
    if isinstance(sampler, DPMSolverPP):
        out = sampler.sample(model, probe)[:, 0]
        a, c = (out[1] - out[0]).item(), out[0].item()
        return a * mean + c, a * a * var
    for i in reversed(range(sampler.num_steps)):
        out = sampler.step(model, probe, i, torch.Generator().manual_seed(i))[0][:, 0]
        z = torch.randn(probe.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)[:, 0]
        sigma = ((out[0] - out[2]) / (z[0] - z[2])).item()
        c = out[0].item() - sigma * z[0].item()
        a = out[1].item() - c - sigma * z[1].item()
        mean, var = a * mean + c, a * a * var + sigma * sigma
    return mean, var
