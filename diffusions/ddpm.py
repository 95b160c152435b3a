"""Denoising diffusion probabilistic models (Ho, Jain, Abbeel 2020): the math in one place.

Every coefficient comes from one table computed once in float64 from the betas (cf. improved-diffusion's
`gaussian_diffusion.py`) and is looked up per timestep; scripts never re-derive one. Images live in
[-1, 1], shape B×C×H×W. Step index i = 0 … S-1 runs over the (possibly respaced) chain; the network is
called with the original timestep `timesteps[i]` in 0 … T-1.
"""
from typing import Callable, Iterator, Optional, Tuple

import torch
from torch import Tensor


OBJECTIVES = ('pred_eps', 'pred_x0', 'pred_v')
VAR_TYPES = ('fixed_large', 'fixed_small')

# A model maps (x_t: B×C×H×W, t: B int64 in 0 … T-1) to its prediction of the objective, shaped like x_t.
Model = Callable[[Tensor, Tensor], Tensor]


class Sampler:
    """What every sampler offers: `sample_loop` yields (x, x̂0) after each step, `sample` returns the last x.

    One-step samplers define `step(model, x_t, i, generator) -> (x_{i-1}, x̂0)`; multistep ones override
    `sample_loop`.
    """
    num_steps: int

    def sample_loop(self, model: Model, x_T: Tensor, generator: Optional[torch.Generator] = None
                    ) -> Iterator[Tuple[Tensor, Tensor]]:
        """Run the chain from x_T; yields (x_{i-1}, x̂0) after each of the S steps (the last x is the sample)."""
        x = x_T
        for i in reversed(range(self.num_steps)):
            x, x0 = self.step(model, x, i, generator)
            yield x, x0

    def sample(self, model: Model, x_T: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The final sample of the chain started at x_T."""
        for x, _ in self.sample_loop(model, x_T, generator):
            pass
        return x


class DDPM(Sampler):
    """Gaussian diffusion with the tables of Ho et al. (eq. 4, 6, 7) and a DDPM reverse process.

    Args:
        betas: (S,) float64 noise schedule of the chain to run.
        objective: what the network predicts: 'pred_eps' (ε, the paper), 'pred_x0' or 'pred_v'
            (v = √ᾱ ε − √(1−ᾱ) x0, Salimans & Ho 2022).
        var_type: reverse-step variance: 'fixed_large' σ² = β_t or 'fixed_small' σ² = β̃_t (eq. 7).
        clip_denoised: clip the predicted x0 to [-1, 1] before taking the posterior mean.
        timesteps: (S,) int64 network timestep of each step; defaults to 0 … S-1 (no respacing).
    """

    def __init__(self, betas: Tensor, objective: str = 'pred_eps', var_type: str = 'fixed_large',
                 clip_denoised: bool = True, timesteps: Optional[Tensor] = None):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown diffusion.objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if var_type not in VAR_TYPES:
            raise ValueError(f"unknown var_type {var_type!r}; choose one of {', '.join(VAR_TYPES)}")
        betas = betas.to(torch.float64)
        self.objective, self.var_type, self.clip_denoised = objective, var_type, clip_denoised
        self.num_steps = len(betas)
        self.timesteps = torch.arange(self.num_steps) if timesteps is None else timesteps.long()

        # ---- the coefficient table (float64, shape (S,) each) ----
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        posterior_variance = betas * (1 - abar_prev) / (1 - abar)                  # β̃_t, eq. 7
        table = dict(
            betas=betas,
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            sqrt_alphas_cumprod=abar.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1 - abar).sqrt(),
            sqrt_recip_alphas_cumprod=abar.rsqrt(),
            sqrt_recipm1_alphas_cumprod=(1 / abar - 1).sqrt(),
            posterior_variance=posterior_variance,
            # β̃_0 = 0: its log is clipped to β̃_1's, as in the paper's code
            posterior_log_variance_clipped=torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
            if self.num_steps > 1 else torch.log(betas),
            posterior_mean_coef1=betas * abar_prev.sqrt() / (1 - abar),              # × x0, eq. 7
            posterior_mean_coef2=(1 - abar_prev) * alphas.sqrt() / (1 - abar),       # × x_t, eq. 7
        )
        # the reverse-step variance: its log as the paper's code takes it for the variational bound (fixed_large
        # β_t with β_0 replaced by β̃_1, the decoder's; fixed_small β̃_t clipped), and the standard deviation of
        # sampling, zero at the last step (i = 0) where no noise is added
        if var_type == 'fixed_large':
            table['model_log_variance'] = torch.log(torch.cat([posterior_variance[1:2], betas[1:]])) \
                if self.num_steps > 1 else torch.log(betas)
            std = betas.sqrt()
        else:
            table['model_log_variance'] = table['posterior_log_variance_clipped']
            std = (0.5 * table['posterior_log_variance_clipped']).exp()
        table['sigmas'] = torch.where(torch.arange(self.num_steps) == 0, torch.zeros_like(std), std)
        self.table = table
        self._device_tables = {}
        self._device_timesteps = {}

    # ---------------------------------------------------------------- table lookup
    def _tables_on(self, device: torch.device, dtype: torch.dtype) -> dict:
        """The table cast once per (device, dtype) and kept, so lookups cost no host-to-device copy."""
        key = (device, dtype)
        if key not in self._device_tables:
            self._device_tables[key] = {k: v.to(device=device, dtype=dtype) for k, v in self.table.items()}
        return self._device_tables[key]

    def coef(self, name: str, i: Tensor, x: Tensor) -> Tensor:
        """Table `name` at step indices i (B,), in x's dtype/device, shaped B×1×…×1 to broadcast with x."""
        return self._tables_on(x.device, x.dtype)[name][i].reshape(-1, *([1] * (x.dim() - 1)))

    def model_timesteps(self, i: Tensor) -> Tensor:
        """Network timesteps (B,) int64 for chain step indices i (B,)."""
        if i.device not in self._device_timesteps:
            self._device_timesteps[i.device] = self.timesteps.to(i.device)
        return self._device_timesteps[i.device][i]

    # ---------------------------------------------------------------- forward process
    def q_sample(self, x0: Tensor, i: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε (eq. 4)."""
        return self.coef('sqrt_alphas_cumprod', i, x0) * x0 + self.coef('sqrt_one_minus_alphas_cumprod', i, x0) * noise

    def q_posterior_mean(self, x0: Tensor, x_t: Tensor, i: Tensor) -> Tensor:
        """μ̃_t(x_t, x0) of q(x_{t-1} | x_t, x0) (eq. 7)."""
        return self.coef('posterior_mean_coef1', i, x_t) * x0 + self.coef('posterior_mean_coef2', i, x_t) * x_t

    def objective_target(self, x0: Tensor, noise: Tensor, i: Tensor) -> Tensor:
        """What the network should output for x_t = q_sample(x0, i, noise)."""
        if self.objective == 'pred_eps':
            return noise
        if self.objective == 'pred_x0':
            return x0
        return self.coef('sqrt_alphas_cumprod', i, x0) * noise - self.coef('sqrt_one_minus_alphas_cumprod', i, x0) * x0

    def pred_x0_eps(self, model_out: Tensor, x_t: Tensor, i: Tensor) -> Tuple[Tensor, Tensor]:
        """(x0, ε) implied by the network output for any objective (no clipping)."""
        if self.objective == 'pred_eps':
            eps = model_out
            x0 = self.coef('sqrt_recip_alphas_cumprod', i, x_t) * x_t - self.coef('sqrt_recipm1_alphas_cumprod', i, x_t) * eps
        elif self.objective == 'pred_x0':
            x0 = model_out
            eps = (self.coef('sqrt_recip_alphas_cumprod', i, x_t) * x_t - x0) / self.coef('sqrt_recipm1_alphas_cumprod', i, x_t)
        else:  # v: x0 = √ᾱ x_t − √(1−ᾱ) v, ε = √(1−ᾱ) x_t + √ᾱ v
            a, s = self.coef('sqrt_alphas_cumprod', i, x_t), self.coef('sqrt_one_minus_alphas_cumprod', i, x_t)
            x0, eps = a * x_t - s * model_out, s * x_t + a * model_out
        return x0, eps

    # ---------------------------------------------------------------- training
    def training_loss(self, model: Model, x0: Tensor, i: Optional[Tensor] = None,
                      noise: Optional[Tensor] = None) -> Tensor:
        """The simple loss (eq. 14 generalised to the objective): mean squared error, a 0-d float32 tensor.

        i (B,) defaults to uniform steps, noise to standard normal, both from the global RNG of x0's device.
        """
        if i is None:
            i = torch.randint(0, self.num_steps, (x0.shape[0],), device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, i, noise)
        out = model(x_t, self.model_timesteps(i))
        return (out.float() - self.objective_target(x0, noise, i).float()).pow(2).mean()

    # ---------------------------------------------------------------- reverse process
    def predict(self, model: Model, x_t: Tensor, i: Tensor) -> Tuple[Tensor, Tensor]:
        """Run the network at step indices i (B,) and return (x0, ε), x0 clipped if clip_denoised."""
        # a copy: a CUDA-graphed model (torch.compile reduce-overhead) overwrites its output at the next call,
        # and samplers keep x̂0 across steps
        out = model(x_t, self.model_timesteps(i)).to(x_t.dtype, copy=True)
        x0, eps = self.pred_x0_eps(out, x_t, i)
        if self.clip_denoised:
            x0 = x0.clamp(-1, 1)
        return x0, eps

    @torch.no_grad()
    def p_sample(self, model: Model, x_t: Tensor, i: int, generator: Optional[torch.Generator] = None
                 ) -> Tuple[Tensor, Tensor]:
        """One reverse step x_i -> x_{i-1}: N(μ̃(x_t, x̂0), σ²) with σ² fixed-large or fixed-small.

        Returns (x_{i-1}, x̂0), both shaped like x_t. σ = 0 at the last step (i = 0): no noise is added.
        """
        ii = torch.full((x_t.shape[0],), i, device=x_t.device, dtype=torch.long)
        x0, _ = self.predict(model, x_t, ii)
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return self.q_posterior_mean(x0, x_t, ii) + self.coef('sigmas', ii, x_t) * noise, x0

    step = p_sample     # the Sampler interface
