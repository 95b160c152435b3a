"""DDPM, DDIM and DPM-Solver++ against data whose optimal denoiser is known in closed form (float64).

diffusions/gaussian_oracle.py gives that denoiser for x0 ~ N(mu, s²) per pixel, with ᾱ = ᾱ_t of the full T-step
schedule at the ORIGINAL timestep t the "model" receives, and the exact mean and variance of a sampler's output
under it. A correct sampler driven by this model returns samples ~ N(mu, s²) up to its discretisation error.
"""
import math

import pytest
import torch

from diffusions import DDIM, SKIP_TYPES, DPMSolverPP, from_config, make_sampler
from diffusions.gaussian_oracle import exact_output_moments, gaussian_denoiser
from utils.errors import UserError

T = 1000
MU, S_DATA = 0.3, 0.8
# cosine schedule: its log-SNR is close to linear in t, so the few-step solvers see evenly sized steps
COSINE = dict(total_steps=T, beta_schedule='cosine', beta_start=1e-4, beta_end=0.02,
              objective='pred_eps', var_type='fixed_large', clip_denoised=False)
N = 40_000            # samples of one pixel each


pytestmark = pytest.mark.usefixtures('one_thread')


def gaussian_model(cfg, objective, mu=MU, s=S_DATA):
    """The optimal network for x0 ~ N(mu, s²), indexed by original timesteps t (B,) of the full schedule."""
    return gaussian_denoiser(from_config(cfg).table['alphas_cumprod'], mu, s, objective)


def exact_x_T(ddpm, n, generator, mu=MU, s=S_DATA):
    """x_T drawn from the true marginal q(x_{t_top}) = N(√ᾱ mu, ᾱ s² + 1 − ᾱ) at the chain's first step.

    Starting from N(0, I) instead adds an error that the deterministic samplers never forget
    (√ᾱ_top·mu is up to 0.04 for the quad skip that stops at t = 800); this test is about the steps.
    """
    a = ddpm.table['alphas_cumprod'][-1].item()
    return math.sqrt(a) * mu + math.sqrt(a * s * s + 1 - a) * torch.randn(n, 1, generator=generator, dtype=torch.float64)


# (sampler, var_type, skip_type, steps, eta, objective, exact bias of the output std in %).
# The bias column is the sampler's own discretisation error for this data, computed exactly (the chain is
# linear-Gaussian, so mean and variance propagate in closed form); mean biases are all < 1e-6. DDPM/DDIM
# are first order: their std bias is ≈ c/steps (fixed_small −0.28% at T steps, −0.55% at 500; fixed_large
# is exact for s = 1 and +0.27% at 100 steps here, but +1.9% at 50 and +9% at 10 steps for s = 0.5: the
# fixed-large variance overshoots with few steps by design, so it is tested with ≥ 100). DPM-Solver++(2M)
# is second order: ≤ 0.6% from 10 steps on this schedule. Every bias is below 0.4 of the tolerance below.
CASES = [
    ('ddpm', 'fixed_large', None, T, None, 'pred_eps', +0.02),
    ('ddpm', 'fixed_small', None, T, None, 'pred_eps', -0.28),
    ('ddpm', 'fixed_large', 'uniform', 100, None, 'pred_eps', +0.27),
    ('ddpm', 'fixed_large', 'quad', 100, None, 'pred_x0', +0.31),
    ('ddpm', 'fixed_large', 'uniform2', 100, None, 'pred_v', +0.28),
    ('ddpm', 'fixed_small', 'uniform', 500, None, 'pred_eps', -0.55),
    ('ddim', None, None, T, 0.0, 'pred_eps', -0.13),
    ('ddim', None, 'uniform2', 500, 0.0, 'pred_v', -0.26),
    ('ddim', None, 'uniform', 500, 1.0, 'pred_x0', -0.55),
    ('dpm_solver++', None, 'uniform', 20, None, 'pred_eps', +0.10),
    ('dpm_solver++', None, 'uniform2', 20, None, 'pred_v', -0.13),
    ('dpm_solver++', None, 'quad', 15, None, 'pred_x0', +0.05),
    ('dpm_solver++', None, 'quad', 10, None, 'pred_eps', +0.54),
]


@pytest.mark.parametrize('name,var_type,skip_type,steps,eta,objective,bias', CASES,
                         ids=[f'{c[0]}-{c[1] or ""}{"-eta" + str(c[4]) if c[4] is not None else ""}-'
                              f'{c[2] or "full"}{c[3]}-{c[5]}' for c in CASES])
def test_sampler_recovers_gaussian_data(name, var_type, skip_type, steps, eta, objective, bias):
    cfg = dict(COSINE, objective=objective)
    ddpm = from_config(cfg, var_type=var_type, skip_type=skip_type, skip_steps=steps if skip_type else None)
    assert ddpm.num_steps == steps
    sampler = make_sampler(name, ddpm, eta)
    g = torch.Generator().manual_seed(123)
    x = sampler.sample(gaussian_model(cfg, objective), exact_x_T(ddpm, N, g), g)
    # tolerances: 4 standard errors of the sample mean (s/√N = 0.004) and of the sample std (s/√(2N): 1.41%)
    assert abs(x.mean().item() - MU) < 4 * S_DATA / math.sqrt(N)
    assert abs(x.std().item() / S_DATA - 1) < 4 / math.sqrt(2 * N)


def test_sampler_order_of_accuracy():
    """Deterministic check of the solvers' order on the exact ODE solution (quad skip: steps shrink evenly).

    For Gaussian data the probability-flow ODE keeps (x_t − √ᾱ mu)/√(ᾱ s² + 1 − ᾱ) constant, so the final
    x̂0 = a·x_T + b with a known slope a. DDIM is first order (halving the step halves the error),
    DPM-Solver++(2M) second order (halving it divides the error by ≥ 4).
    """
    s = 0.5
    cfg = dict(COSINE, beta_schedule='linear')

    def slope_error(name, steps):
        d = from_config(cfg, skip_type='quad', skip_steps=steps)
        out = make_sampler(name, d).sample(gaussian_model(cfg, 'pred_eps', s=s), torch.tensor([[0.], [1.]], dtype=torch.float64))
        a_top, a0 = d.table['alphas_cumprod'][-1].item(), d.table['alphas_cumprod'][0].item()
        exact = math.sqrt(a0) * s * s / math.sqrt(a0 * s * s + 1 - a0) / math.sqrt(a_top * s * s + 1 - a_top)
        return (out[1] - out[0]).item() / exact - 1

    ddim = [slope_error('ddim', k) for k in (20, 40, 80)]
    dpm = [slope_error('dpm_solver++', k) for k in (20, 40, 80)]
    for e in (ddim, dpm):
        assert e[0] * e[1] > 0 and e[1] * e[2] > 0      # converging from one side, no sign flips
    assert all(1.8 < ddim[k] / ddim[k + 1] < 2.2 for k in range(2))
    assert all(dpm[k] / dpm[k + 1] > 4 for k in range(2))
    assert abs(dpm[2]) < 1e-3 and abs(dpm[2]) < abs(ddim[2]) / 10


def test_ddim_eta0_and_dpm_solver_are_deterministic():
    d = from_config(dict(COSINE, clip_denoised=True), skip_type='uniform', skip_steps=10)
    model = lambda x, t: torch.tanh(x) * (t.to(x.dtype).reshape(-1, 1, 1, 1) / T)
    x_T = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sampler in (DDIM(d, 0.0), DPMSolverPP(d)):
        a = list(sampler.sample_loop(model, x_T, torch.Generator().manual_seed(1)))
        b = list(sampler.sample_loop(model, x_T, torch.Generator().manual_seed(2)))
        assert len(a) == 10 and all(x.shape == x_T.shape and x0.shape == x_T.shape for x, x0 in a)
        for (xa, x0a), (xb, x0b) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(x0a, x0b)
        # the chain ends at the network's data prediction: ᾱ_prev = 1 at the last DDIM step; the final
        # DPM-Solver++ step goes to σ = 0
        torch.testing.assert_close(a[-1][0], a[-1][1], rtol=0, atol=1e-12)
    # with η > 0 the generator matters
    e1 = DDIM(d, 1.0)
    assert not torch.equal(e1.sample(model, x_T, torch.Generator().manual_seed(1)),
                           e1.sample(model, x_T, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize('clip', [False, True])
def test_ddim_eta1_is_ddpm_fixed_small(clip):
    """η = 1 gives σ² = β̃ and the DDPM posterior mean: the same chain as DDPM fixed_small, draw for draw."""
    cfg = dict(COSINE, objective='pred_v', clip_denoised=clip)
    d = from_config(cfg, var_type='fixed_small', skip_type='uniform2', skip_steps=25)
    model = lambda x, t: 0.5 * torch.sin(3 * x) + (t.to(x.dtype).reshape(-1, 1, 1, 1) / T)
    x_T = torch.randn(4, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ddim = list(DDIM(d, 1.0).sample_loop(model, x_T, torch.Generator().manual_seed(5)))
    ddpm = list(d.sample_loop(model, x_T, torch.Generator().manual_seed(5)))
    for (x1, p1), (x2, p2) in zip(ddim, ddpm):
        torch.testing.assert_close(x1, x2, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(p1, p2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('name', ['ddim', 'dpm_solver++'])
def test_fast_samplers_pass_original_timesteps(name):
    d = from_config(COSINE, skip_type='uniform', skip_steps=10)
    seen = []
    make_sampler(name, d).sample(lambda x, t: seen.append(t.tolist()) or torch.zeros_like(x),
                                 torch.zeros(2, 1, 2, 2, dtype=torch.float64))
    assert [s[0] for s in seen] == list(range(900, -1, -100)) and all(s[0] == s[1] for s in seen)


def test_one_step_chains_return_the_prediction():
    d = from_config(dict(COSINE, objective='pred_x0'), skip_type='uniform', skip_steps=1)
    x_T = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    for name in ('ddpm', 'ddim', 'dpm_solver++'):
        out = make_sampler(name, d).sample(lambda x, t: torch.full_like(x, 0.25), x_T, torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, torch.full_like(x_T, 0.25))


def test_bad_sampler_settings_are_one_line_errors():
    d = from_config(COSINE, skip_type='uniform', skip_steps=10)
    with pytest.raises(UserError, match="unknown sampler 'plms'; choose one of ddpm, ddim, dpm_solver\\+\\+"):
        make_sampler('plms', d)
    for bad in (-0.1, float('nan')):
        with pytest.raises(UserError, match='DDIM eta must be a number >= 0'):
            make_sampler('ddim', d, bad)
    assert make_sampler('ddpm', d) is d


SAMPLERS_EXACT = [('ddpm', 'fixed_large'), ('ddpm', 'fixed_small'), ('ddim', None), ('dpm_solver++', None)]


@pytest.mark.parametrize('skip_type', SKIP_TYPES)
def test_every_sampler_and_spacing_on_long_chains(skip_type):
    """S ∈ {250, 300, 400, 501, 600, 900} of T = 1000, cosine schedule, x_T ~ N(0, I) as sample_ddpm.py draws it:
    every sampler lands within 0.003 of the data mean and 3.5% of its std (exact moments; N(0.3, 0.5²)).

    Before the fix, `uniform` with a non-divisor S took the stride ⌊T/S⌋ = 1 and started S = 501 at t = 500
    (√ᾱ = 0.70 on cosine) from N(0, I): DDIM's std came out +25.7%. `quad` starts at t = 0.8 T by design
    (DDIM's), so its chain starts from the true marginal there; the others all start at T − 1 (or T − T/S).
    DDPM runs two of the sizes (its steps cost the most here)."""
    mu, s = MU, 0.5
    cfg = dict(COSINE)
    model = gaussian_model(cfg, 'pred_eps', mu=mu, s=s)
    for name, var_type in SAMPLERS_EXACT:
        for steps in ((300, 501) if name == 'ddpm' else (250, 300, 400, 501, 600, 900)):
            d = from_config(cfg, var_type=var_type, skip_type=skip_type, skip_steps=steps)
            assert d.num_steps == steps and d.timesteps[-1] >= 1000 - 1000 // steps - (200 if skip_type == 'quad' else 0)
            a = d.table['alphas_cumprod'][-1].item()
            start = (math.sqrt(a) * mu, a * s * s + 1 - a) if skip_type == 'quad' else (0.0, 1.0)
            mean, var = exact_output_moments(make_sampler(name, d), model, *start)
            assert abs(mean - mu) < 0.003, (name, var_type, steps, mean)
            assert abs(math.sqrt(var) / s - 1) < 0.035, (name, var_type, steps, math.sqrt(var) / s - 1)


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_short_chains_that_start_at_T_minus_1(schedule):
    """10 and 20 steps from x_T ~ N(0, I): the spacings that start at T − 1 (uniform2, trailing, logsnr) keep the
    data mean within 0.001 for DDIM and DPM-Solver++ (`uniform` starts at T − T/S: on cosine √ᾱ = 0.154 at
    t = 900, and the mean comes out 0.280 / 0.278 at 10 steps). On the linear schedule DPM-Solver++ on
    log-SNR-even steps keeps the std within 2% at 10 and 20 steps (time-uniform steps: −18% at 10 steps). Not
    on cosine: its capped last betas send λ_{T−1} far down, and log-SNR-even steps crowd there (997, 998, 999
    at 10 steps): −7.3% at 10 steps, where uniform2 gives −6.1% and trailing −9.6%."""
    mu, s = MU, 0.5
    cfg = dict(COSINE, beta_schedule=schedule)
    model = gaussian_model(cfg, 'pred_eps', mu=mu, s=s)
    for steps in (10, 20):
        for skip_type in ('uniform2', 'trailing', 'logsnr'):
            d = from_config(cfg, skip_type=skip_type, skip_steps=steps)
            assert d.timesteps[-1] == 999
            for name in ('ddim', 'dpm_solver++'):
                mean, var = exact_output_moments(make_sampler(name, d), model)
                assert abs(mean - mu) < 0.001, (skip_type, name, steps, mean)
                if name == 'dpm_solver++' and skip_type == 'logsnr' and schedule == 'linear':
                    assert abs(math.sqrt(var) / s - 1) < 0.02, (steps, math.sqrt(var) / s - 1)
