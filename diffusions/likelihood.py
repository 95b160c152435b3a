"""The variational bound on the negative log-likelihood of 8-bit images, in bits/dim (Ho et al. 2020, eq. 5).

    L = L_T + Σ_{t>1} L_{t-1} + L_0,   L_T     = KL(q(x_T | x0) ‖ N(0, I))                 'prior'
                                        L_{t-1} = KL(q(x_{t-1} | x_t, x0) ‖ p(x_{t-1} | x_t))  summed: 'vb'
                                        L_0     = −log p(x0 | x_1), a discretized Gaussian   'decoder'

each term estimated with one draw of x_t ~ q(x_t | x0) (eq. 4) per image and step, as the paper's code
(diffusion_tf's calc_bpd_loop, improved-diffusion's) does, and divided by (dims × ln 2). In the repo's indexing
the chain step i = 0 … S-1 is the paper's t = i + 1: the prior is at step S-1, the decoder at step 0.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .ddpm import DDPM, Model

BIN = 2 / 255          # the width of one 8-bit level in [-1, 1]


def normal_kl(mean1: Tensor, logvar1, mean2: Tensor, logvar2) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) in nats, elementwise (arguments broadcast; all but mean1
    may be floats).

    = ½ (logvar2 − logvar1 + e^(logvar1 − logvar2) + (mean1 − mean2)² e^(−logvar2) − 1).
    """
    logvar1, logvar2 = (v if isinstance(v, Tensor) else torch.tensor(v, dtype=mean1.dtype, device=mean1.device)
                        for v in (logvar1, logvar2))
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def _log1mexp(d: Tensor) -> Tensor:
    """log(1 − e^d) for d ≤ 0, accurate near 0 and for very negative d."""
    return torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def log_normal_interval(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) − Φ(a)) for a < b (±inf allowed), Φ the standard normal CDF.

    Computed as the difference of two lower-tail probabilities (Φ(b) − Φ(a) = Φ(−a) − Φ(−b) where the interval
    lies mostly above 0), from log Φ (torch.special.log_ndtr): accurate far out in either tail, where Φ rounds
    to 0 or 1.
    """
    upper = a + b > 0
    lo, hi = torch.where(upper, -b, a), torch.where(upper, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + _log1mexp(torch.special.log_ndtr(lo) - log_hi)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale) -> Tensor:
    """log p(x) in nats, elementwise, of 8-bit data under N(mean, e^(2 log_scale)) discretized to the 256 levels.

    x: values 2k/255 − 1 (k = 0 … 255) in [-1, 1], any shape; mean and log_scale (log of the standard deviation)
    broadcast with it. The probability of level x is the Gaussian mass of its bin [x − 1/255, x + 1/255], with
    the edge bins extended to −inf (x = −1) and +inf (x = 1), so the 256 probabilities sum to 1 (Ho et al.
    2020, eq. 13). Exact CDFs, in float64; returns float64.
    """
    x, mean = x.double(), mean.double()
    inv_std = torch.exp(-torch.as_tensor(log_scale, dtype=torch.float64, device=x.device))
    lower = torch.where(x < -1 + BIN / 2, -math.inf, (x - mean - BIN / 2) * inv_std)
    upper = torch.where(x > 1 - BIN / 2, math.inf, (x - mean + BIN / 2) * inv_std)
    return log_normal_interval(lower, upper)


def _per_image_bits(nats: Tensor) -> Tensor:
    """Nats B×C×H×W summed per image and divided by (C·H·W · ln 2): bits/dim, shape (B,)."""
    return nats.flatten(1).sum(1) / (nats[0].numel() * math.log(2))


def _step_noise(generators: Sequence[torch.Generator], shape) -> Tensor:
    """One standard-normal float32 draw of `shape` (C×H×W) from each image's generator, stacked: B×C×H×W."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def variational_bound(ddpm: DDPM, model: Model, x0: Tensor, generators: Sequence[torch.Generator],
                      progress: Optional[Callable[[int], None]] = None) -> Dict[str, Tensor]:
    """The variational bound of each image of x0 in bits/dim, for `ddpm`'s chain and variance; see
    :func:`variational_bounds`."""
    return variational_bounds([ddpm], model, x0, generators, progress)[0]


@torch.no_grad()
def variational_bounds(ddpms: Sequence[DDPM], model: Model, x0: Tensor, generators: Sequence[torch.Generator],
                       progress: Optional[Callable[[int], None]] = None) -> List[Dict[str, Tensor]]:
    """The variational bound (Ho et al. 2020, eq. 5) of each image of x0, in bits/dim, for each DDPM of `ddpms`.

    The DDPMs differ only in var_type (same chain, objective, clipping): the network runs once per step for all
    of them. The mean of p(x_{i-1} | x_i) is μ̃(x̂0, x_i) (eq. 7) with x̂0 = ddpm.predict (clipped if
    clip_denoised), its log-variance the table's model_log_variance.

    x0: B×C×H×W data 2k/255 − 1 in [-1, 1] on the model's device, in the dtype the model runs in; x_t is formed
        in that dtype, every term is then computed in float64.
    generators: one CPU torch.Generator per image. For i = S-1, S-2, …, 0 in turn, image b's noise of step i
        is torch.randn(C×H×W, generator=generators[b]) (float32), then moved to x0's device and dtype. So an
        image's result does not depend on the batch it is in.
    progress: called with 1 after each of the S network calls (a tqdm bar's `update` fits).

    Returns one dict per DDPM of float64 tensors on x0's device: 'prior', 'vb' (the KL terms of steps i ≥ 1
    summed), 'decoder', 'total' (their sum), each (B,), and 'terms' (B×S: step i's KL term, the decoder at i = 0).
    """
    first = ddpms[0]
    for d in ddpms[1:]:
        if not (torch.equal(d.table['betas'], first.table['betas']) and torch.equal(d.timesteps, first.timesteps)
                and (d.objective, d.clip_denoised) == (first.objective, first.clip_denoised)):
            raise ValueError("variational_bounds: the DDPMs must differ in var_type only")
    B, S, f64 = x0.shape[0], first.num_steps, torch.float64
    x0_64 = x0.to(f64)
    terms = x0.new_zeros((len(ddpms), B, S), dtype=f64)
    for i in reversed(range(S)):
        ii = torch.full((B,), i, device=x0.device, dtype=torch.long)
        noise = _step_noise(generators, x0.shape[1:]).to(x0.device, x0.dtype)
        x_t = first.q_sample(x0, ii, noise)
        x0_pred, _ = first.predict(model, x_t, ii)
        x_t, x0_pred = x_t.to(f64), x0_pred.to(f64)
        model_mean = first.q_posterior_mean(x0_pred, x_t, ii)
        if i > 0:
            true_mean = first.q_posterior_mean(x0_64, x_t, ii)
            true_log_var = first.coef('posterior_log_variance_clipped', ii, x_t)   # = log β̃_t for i ≥ 1
        for k, d in enumerate(ddpms):
            model_log_var = d.coef('model_log_variance', ii, x_t)
            if i > 0:
                nats = normal_kl(true_mean, true_log_var, model_mean, model_log_var)
            else:
                nats = -discretized_gaussian_log_likelihood(x0_64, model_mean, 0.5 * model_log_var)
            terms[k, :, i] = _per_image_bits(nats)
        if progress is not None:
            progress(1)

    # L_T: q(x_T | x0) = N(√ᾱ x0, 1 − ᾱ) at the chain's last step against N(0, I); no network, no noise
    last = torch.full((B,), S - 1, device=x0.device, dtype=torch.long)
    prior = _per_image_bits(normal_kl(first.coef('sqrt_alphas_cumprod', last, x0_64) * x0_64,
                                      torch.log1p(-first.coef('alphas_cumprod', last, x0_64)), 0.0, 0.0))
    out = []
    for k in range(len(ddpms)):
        vb, decoder = terms[k, :, 1:].sum(1), terms[k, :, 0]
        out.append(dict(prior=prior, vb=vb, decoder=decoder, total=prior + vb + decoder, terms=terms[k]))
    return out
