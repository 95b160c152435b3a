"""The diffusion math against closed forms, in float64."""
import math

import numpy as np
import pytest
import torch

from diffusions import DDPM, from_config, make_betas, respace_betas, skip_sequence
from utils.errors import UserError

T = 1000
LINEAR = dict(total_steps=T, beta_schedule='linear', beta_start=1e-4, beta_end=0.02,
              objective='pred_eps', var_type='fixed_large', clip_denoised=False)


def f64(x):
    return torch.as_tensor(x, dtype=torch.float64)


def test_linear_quad_const_sigmoid_betas():
    np.testing.assert_allclose(make_betas('linear', T, 1e-4, 0.02), np.linspace(1e-4, 0.02, T), rtol=1e-12)
    np.testing.assert_allclose(make_betas('quad', T, 1e-4, 0.02), np.linspace(1e-2, 0.02 ** 0.5, T) ** 2, rtol=1e-12)
    np.testing.assert_allclose(make_betas('const', 10, 1e-4, 0.02), np.full(10, 0.02))
    sig = 1 / (1 + np.exp(-np.linspace(-6, 6, T))) * (0.02 - 1e-4) + 1e-4
    np.testing.assert_allclose(make_betas('sigmoid', T, 1e-4, 0.02), sig, rtol=1e-12)
    for name in ('linear', 'quad', 'const', 'cosine', 'sigmoid'):
        b = make_betas(name, T, 1e-4, 0.02)
        assert b.dtype == torch.float64 and b.shape == (T,) and (b > 0).all() and (b < 1).all()


def test_cosine_matches_nichol_dhariwal_alpha_bar():
    betas = make_betas('cosine', T)
    s = 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    abar_ref = np.array([f(t + 1) / f(0) for t in range(T)])
    abar = torch.cumprod(1 - betas, 0).numpy()
    capped = (betas >= 0.999).numpy()
    assert capped.sum() >= 1 and capped[-1]          # only the very end is capped at 0.999
    np.testing.assert_allclose(abar[~capped], abar_ref[~capped], rtol=1e-10)
    assert betas.max() == 0.999


def test_tables_against_paper_equations():
    d = from_config(LINEAR)
    betas = np.linspace(1e-4, 0.02, T)
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    tb = {k: v.numpy() for k, v in d.table.items()}
    np.testing.assert_allclose(tb['alphas_cumprod'], abar, rtol=1e-12)
    np.testing.assert_allclose(tb['sqrt_recip_alphas_cumprod'], 1 / np.sqrt(abar), rtol=1e-12)
    np.testing.assert_allclose(tb['sqrt_recipm1_alphas_cumprod'], np.sqrt(1 / abar - 1), rtol=1e-12)
    # eq. 7: posterior variance and mean coefficients
    np.testing.assert_allclose(tb['posterior_variance'], (1 - abar_prev) / (1 - abar) * betas, rtol=1e-12)
    np.testing.assert_allclose(tb['posterior_mean_coef1'], np.sqrt(abar_prev) * betas / (1 - abar), rtol=1e-12)
    np.testing.assert_allclose(tb['posterior_mean_coef2'], np.sqrt(alphas) * (1 - abar_prev) / (1 - abar), rtol=1e-12)
    post = (1 - abar_prev) / (1 - abar) * betas
    np.testing.assert_allclose(tb['posterior_log_variance_clipped'], np.log(np.append(post[1], post[1:])), rtol=1e-12)
    assert tb['posterior_variance'][0] == 0


def test_posterior_is_bayes_rule():
    """q(x_{t-1} | x_t, x0) from Gaussian conjugacy: prior N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1}), likelihood N(√α_t x_{t-1}, β_t)."""
    d = from_config(LINEAR)
    x0, xt = f64([[0.3], [-0.7], [0.9]]), f64([[1.1], [0.2], [-2.0]])
    i = torch.tensor([1, 500, 999])
    b = d.table['betas'][i].unsqueeze(1)
    ap = d.table['alphas_cumprod_prev'][i].unsqueeze(1)
    prec = 1 / (1 - ap) + (1 - b) / b
    mean = (ap.sqrt() * x0 / (1 - ap) + (1 - b).sqrt() * xt / b) / prec
    torch.testing.assert_close(d.q_posterior_mean(x0, xt, i), mean, rtol=1e-10, atol=0)
    torch.testing.assert_close(d.table['posterior_variance'][i], (1 / prec).squeeze(1), rtol=1e-10, atol=0)


def test_skip_sequences_match_reference_definitions():
    assert skip_sequence('uniform', 100, T).tolist() == list(range(0, T, 10))          # DDIM: range(0, T, T // S)
    assert skip_sequence('uniform', 1000, T).tolist() == list(range(T))
    assert skip_sequence('uniform2', 10, T).tolist() == np.linspace(0, T - 1, 10).round().astype(int).tolist()
    ref_quad = [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), 10) ** 2]               # DDIM's quad
    assert skip_sequence('quad', 10, T).tolist() == ref_quad
    q = skip_sequence('quad', 100, T)
    assert len(q) == 100 and (q[1:] > q[:-1]).all() and q[-1] == 800
    # trailing (Lin et al. 2024): np.round(np.arange(T, 0, -T / S)) - 1, as their reference snippet writes it
    for S in (10, 7, 300):
        ref = (np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1)[:S][::-1].tolist()
        assert skip_sequence('trailing', S, T).tolist() == ref and ref[-1] == T - 1
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match='skip_steps must be an integer in'):
            skip_sequence('uniform', bad, T)
    with pytest.raises(ValueError, match='unknown skip_type'):
        skip_sequence('every', 10, T)


def space_timesteps(num_timesteps, section_counts):
    """improved-diffusion's respace.space_timesteps, verbatim but for the "ddimN" branch (not used here)."""
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        if section_count <= 1:
            frac_stride = 1
        else:
            frac_stride = (size - 1) / (section_count - 1)
        cur_idx = 0.0
        taken_steps = []
        for _ in range(section_count):
            taken_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken_steps
        start_idx += size
    return set(all_steps)


@pytest.mark.parametrize('S', [3, 250, 300, 400, 501, 600, 900, 999])
def test_uniform_with_any_number_of_steps(S):
    """S that does not divide T: improved-diffusion's even spacing from 0 to T-1, so the chain starts at t = T-1
    (the old stride ⌊T/S⌋ = 1 started S = 501 at t = 500 from N(0, I)); divisors keep DDIM's sequence."""
    seq = skip_sequence('uniform', S, T)
    if T % S:
        assert seq.tolist() == sorted(space_timesteps(T, [S]))
        assert seq[0] == 0 and seq[-1] == T - 1 and len(seq) == S
        gaps = seq[1:] - seq[:-1]
        assert gaps.max() - gaps.min() <= 1
    else:
        assert seq.tolist() == list(range(0, T, T // S))
    for divisor in (1, 2, 8, 40, 125, 250, 500):
        assert skip_sequence('uniform', divisor, T).tolist() == list(range(0, T, T // divisor))


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_logsnr_steps_are_even_in_log_snr(schedule):
    """logsnr: S distinct steps from 0 to T-1 whose λ = ½ log(ᾱ / (1 − ᾱ)) are as evenly spaced as integer t
    allows (each within half a step of its target, where no repeat had to be pushed)."""
    abar = from_config(dict(LINEAR, beta_schedule=schedule)).table['alphas_cumprod']
    lam = 0.5 * (abar.log() - torch.log1p(-abar))
    for S in (10, 20, 50, 250, 1000):
        seq = skip_sequence('logsnr', S, T, abar)
        assert len(seq) == S and (seq[1:] > seq[:-1]).all() and seq[0] == 0 and seq[-1] == T - 1
        targets = torch.linspace(lam[-1].item(), lam[0].item(), S, dtype=torch.float64).flip(0)
        for t, target in zip(seq.tolist(), targets.tolist()):
            nearest = (lam - target).abs().argmin().item()
            if nearest == t:          # not pushed: no integer timestep is closer to its λ target
                assert abs(lam[t] - target) <= min(abs(lam[max(t - 1, 0)] - target), abs(lam[min(t + 1, T - 1)] - target))
    with pytest.raises(ValueError, match="'logsnr' needs the schedule's alphas_cumprod"):
        skip_sequence('logsnr', 10, T)


@pytest.mark.parametrize('skip_type', ['uniform', 'uniform2', 'quad', 'trailing', 'logsnr'])
def test_respaced_chain_keeps_marginals(skip_type):
    full = from_config(LINEAR)
    d = from_config(LINEAR, skip_type=skip_type, skip_steps=50)
    assert d.num_steps == 50
    torch.testing.assert_close(d.table['alphas_cumprod'], full.table['alphas_cumprod'][d.timesteps], rtol=1e-12, atol=0)
    # respacing every step is the identity
    same = respace_betas(full.table['alphas_cumprod'], torch.arange(T))
    torch.testing.assert_close(same, full.table['betas'], rtol=1e-9, atol=0)
    # fixed_small of the respaced chain is its own posterior variance, fixed_large its respaced betas
    small = from_config(LINEAR, var_type='fixed_small', skip_type=skip_type, skip_steps=50)
    torch.testing.assert_close(small.table['sigmas'][1:] ** 2, small.table['posterior_variance'][1:], rtol=1e-10, atol=0)
    torch.testing.assert_close(d.table['sigmas'][1:] ** 2, d.table['betas'][1:], rtol=1e-10, atol=0)
    assert d.table['sigmas'][0] == 0 and small.table['sigmas'][0] == 0


def test_q_sample_statistics():
    d = from_config(LINEAR)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.5, dtype=torch.float64)
    for step in (0, 300, 999):
        i = torch.full((n,), step)
        xt = d.q_sample(x0, i, torch.randn(n, 1, generator=g, dtype=torch.float64))
        abar = d.table['alphas_cumprod'][step].item()
        # 5 standard errors of the mean / of the variance estimate
        assert abs(xt.mean().item() - 0.5 * math.sqrt(abar)) < 5 * math.sqrt((1 - abar) / n)
        assert abs(xt.var().item() - (1 - abar)) < 5 * (1 - abar) * math.sqrt(2 / n)


@pytest.mark.parametrize('objective', ['pred_eps', 'pred_x0', 'pred_v'])
def test_loss_is_zero_for_the_true_target_and_inverses_agree(objective):
    d = from_config(dict(LINEAR, objective=objective))
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
    i = torch.randint(0, T, (8,), generator=g)
    target = d.objective_target(x0, noise, i)
    oracle = lambda x_t, t: target
    assert d.training_loss(oracle, x0, i, noise).item() < 1e-20
    assert d.training_loss(lambda x_t, t: target + 0.1, x0, i, noise).item() == pytest.approx(0.01, rel=1e-6)  # the loss is reduced in float32
    x_t = d.q_sample(x0, i, noise)
    x0_hat, eps_hat = d.pred_x0_eps(target, x_t, i)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_hat, noise, rtol=0, atol=1e-9)


def test_model_receives_original_timesteps_when_respaced():
    d = from_config(LINEAR, skip_type='uniform', skip_steps=10)
    seen = []
    d.sample(lambda x, t: seen.append(t.tolist()) or torch.zeros_like(x), torch.zeros(2, 1, 2, 2, dtype=torch.float64))
    assert [s[0] for s in seen] == list(range(900, -1, -100)) and all(s[0] == s[1] for s in seen)


def test_p_sample_with_oracle_x0_is_the_posterior():
    """Given the true x0, a reverse step is exactly q(x_{t-1} | x_t, x0): check mean and std over draws."""
    d = from_config(dict(LINEAR, objective='pred_x0', var_type='fixed_small'))
    n, step = 100_000, 400
    x0 = torch.full((n, 1), 0.25, dtype=torch.float64)
    x_t = torch.full((n, 1), -0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x_prev, x0_hat = d.p_sample(lambda x, t: x0, x_t, step, g)
    torch.testing.assert_close(x0_hat, x0)
    mean = d.q_posterior_mean(x0[:1], x_t[:1], torch.tensor([step])).item()
    var = d.table['posterior_variance'][step].item()
    assert abs(x_prev.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(x_prev.var().item() - var) < 5 * var * math.sqrt(2 / n)
    # the last step adds no noise
    last, _ = d.p_sample(lambda x, t: x0, x_t, 0, g)
    torch.testing.assert_close(last, x0)


def test_sample_loop_yields_every_step_and_is_seeded():
    d = from_config(LINEAR, skip_type='uniform', skip_steps=20)
    model = lambda x, t: 0.1 * x
    xT = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    steps = list(d.sample_loop(model, xT, torch.Generator().manual_seed(3)))
    assert len(steps) == 20 and all(x.shape == xT.shape and x0.shape == xT.shape for x, x0 in steps)
    again = d.sample(model, xT, torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, steps[-1][0], rtol=0, atol=0)


def test_clip_denoised_clips_x0():
    d = from_config(dict(LINEAR, objective='pred_x0', clip_denoised=True))
    _, x0 = d.p_sample(lambda x, t: torch.full_like(x, 3.0), torch.zeros(1, 1, 2, 2), 10)
    assert x0.max().item() == 1.0


def test_bad_names_are_one_line_errors():
    # the math raises ValueError; the edge (diffusions/config.py) turns it into the scripts' one-line UserError
    with pytest.raises(UserError, match="unknown diffusion.beta_schedule 'cosin'; choose one of linear"):
        from_config(dict(LINEAR, beta_schedule='cosin'))
    with pytest.raises(UserError, match="unknown diffusion.objective"):
        from_config(dict(LINEAR, objective='eps'))
    with pytest.raises(UserError, match="unknown var_type 'large'"):
        from_config(LINEAR, var_type='large')
    with pytest.raises(UserError, match="skip_steps must be an integer in"):
        from_config(LINEAR, skip_type='uniform', skip_steps=0)
    with pytest.raises(ValueError, match="unknown var_type 'large'"):
        DDPM(make_betas('linear', 10), var_type='large')
