"""The variational bound in bits/dim (diffusions/likelihood.py) and `evaluate_ddpm.py --nll`.

The bound is checked against data whose optimal denoiser is known in closed form: x0 per pixel is
N(mu, s²) quantized to the 8-bit grid, and the "model" is the optimal denoiser of the unquantized Gaussian,

    x̂0(x_t, t) = mu + √ᾱ s² (x_t − √ᾱ mu) / (ᾱ s² + 1 − ᾱ)      (ᾱ = ᾱ_t at the network's timestep t)

(as in tests/test_samplers.py). It is linear in x_t, so without clipping every KL term has a closed-form
expectation over x_t, and the decoder's a one-dimensional integral (Gauss–Hermite quadrature here).
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState

import evaluate_ddpm
from diffusions import (DDPM, discretized_gaussian_log_likelihood, from_config, normal_kl, variational_bound,
                        variational_bounds)
from diffusions.gaussian_oracle import gaussian_denoiser
from models import build_model
from utils.errors import run_main
import test_sample_cli as sample_cli
from conftest import free_port
from test_sample_cli import CONFIG, ENV, ROOT, TINY, tiny_cfg

ckpt_dir = sample_cli.ckpt_dir          # the fixture: the sampler tests' tiny checkpoint folder (config CONFIG + TINY)

pytestmark = pytest.mark.usefixtures('one_thread')

F64 = torch.float64
MU, S_DATA = 0.3, 0.5
LEVELS = torch.arange(256, dtype=F64) / 127.5 - 1            # the 8-bit grid in [-1, 1]
LN2 = math.log(2)


def ndtr(x):
    return torch.special.ndtr(torch.as_tensor(x, dtype=F64))


# ----------------------------------------------------------------------------- the two Gaussian formulas

def test_normal_kl_closed_form():
    # KL(N(0, 1) ‖ N(1, 4)) = log 2 + (1 + 1) / 8 − 1/2
    got = normal_kl(torch.tensor(0., dtype=F64), 0.0, torch.tensor(1., dtype=F64), math.log(4))
    assert abs(got.item() - (math.log(2) + 0.25 - 0.5)) < 1e-15
    # elementwise, broadcasting, zero for equal Gaussians, and the general formula
    m1, m2 = torch.tensor([0.3, -1.0, 2.0], dtype=F64), torch.tensor([0.3, 0.5, -0.25], dtype=F64)
    v1, v2 = torch.tensor([0.5, 2.0, 1e-3], dtype=F64), torch.tensor([0.5, 0.1, 3.0], dtype=F64)
    want = torch.log(v2.sqrt() / v1.sqrt()) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5
    torch.testing.assert_close(normal_kl(m1, v1.log(), m2, v2.log()), want, rtol=1e-14, atol=1e-15)
    assert normal_kl(m1, v1.log(), m1, v1.log()).abs().max() < 1e-15


@pytest.mark.parametrize('mean,scale', [(0.0, 1.0), (0.3, 0.01), (-0.9, 0.2), (1.0, 1e-4), (0.5, 1e-7),
                                        (3.0, 0.05), (-5.0, 0.3), (0.1, 30.0)])
def test_discretized_gaussian_is_a_distribution_over_the_256_levels(mean, scale):
    logp = discretized_gaussian_log_likelihood(LEVELS, torch.tensor(mean, dtype=F64), math.log(scale))
    assert logp.dtype == F64 and logp.shape == (256,) and torch.isfinite(logp).all()
    assert abs(logp.exp().sum().item() - 1) < 1e-13
    # the mass of each bin, edges extended to ±inf, straight from the CDF (where it has the digits)
    lower = torch.where(LEVELS < -0.999, -math.inf, (LEVELS - 1 / 255 - mean) / scale)
    upper = torch.where(LEVELS > 0.999, math.inf, (LEVELS + 1 / 255 - mean) / scale)
    p = ndtr(upper) - ndtr(lower)
    big = p > 1e-6
    torch.testing.assert_close(logp[big], p[big].log(), rtol=1e-9, atol=1e-15)


def test_discretized_gaussian_is_exact_in_the_tails():
    mpmath = pytest.importorskip('mpmath')
    mpmath.mp.dps = 50
    # exact arithmetic: Φ(b) − Φ(a) = Φ(−a) − Φ(−b), taken in the lower tail where 50 digits suffice
    Phi = lambda z: mpmath.ncdf(z)
    for x, mean, scale in [(0.9, 0.0, 0.01), (-0.5, 0.5, 0.02), (1.0, -0.8, 0.03), (-1.0, 0.6, 0.05),
                           (2 / 255 - 1, 0.9, 0.1)]:
        lo = -mpmath.inf if x < -0.999 else (mpmath.mpf(x) - mpmath.mpf(1) / 255 - mean) / scale
        hi = mpmath.inf if x > 0.999 else (mpmath.mpf(x) + mpmath.mpf(1) / 255 - mean) / scale
        want = float(mpmath.log(Phi(-lo) - Phi(-hi) if lo > 0 else Phi(hi) - Phi(lo)))
        got = discretized_gaussian_log_likelihood(torch.tensor(x, dtype=F64), torch.tensor(mean, dtype=F64),
                                                  math.log(scale)).item()
        assert want < -100 and abs(got / want - 1) < 1e-10, (x, mean, scale, got, want)


# ----------------------------------------------------------------------------- Gaussian data oracle

def quantized_gaussian_pmf(mu=MU, s=S_DATA):
    """P(x0 = level k) for z ~ N(mu, s²) rounded to the grid (clamped at ±1): (256,) float64."""
    inf = torch.tensor([math.inf], dtype=F64)
    edges = torch.cat([-inf, LEVELS[:-1] + 1 / 255, inf])
    return torch.diff(ndtr((edges - mu) / s))


def quantized_gaussian_images(n, shape, generator, mu=MU, s=S_DATA):
    """n images of `shape` with pixels drawn from quantized_gaussian_pmf, as float64 levels."""
    z = mu + s * torch.randn(n, *shape, generator=generator, dtype=F64)
    return ((z + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def optimal_x0_model(abar_full, mu=MU, s=S_DATA):
    """The optimal pred_x0 network for unquantized x0 ~ N(mu, s²), at original timesteps t (B,)."""
    return gaussian_denoiser(abar_full, mu, s, 'pred_x0')


def tiny_ddpm(schedule, T, var_type, skip_steps=None, clip=False):
    cfg = dict(total_steps=T, beta_schedule=schedule, beta_start=1e-4, beta_end=0.4, objective='pred_x0',
               var_type=var_type, clip_denoised=clip)
    full = from_config(cfg)
    ddpm = from_config(cfg, skip_type='uniform' if skip_steps else None, skip_steps=skip_steps)
    return ddpm, optimal_x0_model(full.table['alphas_cumprod'])


def generators(seed, ks):
    return [torch.Generator().manual_seed(seed * 100_003 + k) for k in ks]


def chain(ddpm):
    """The chain's coefficients (S,) written afresh from its betas (eq. 4, 6, 7)."""
    beta = ddpm.table['betas']
    abar = torch.cumprod(1 - beta, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    post_var = beta * (1 - abar_prev) / (1 - abar)
    return dict(beta=beta, abar=abar, abar_prev=abar_prev, post_var=post_var,
                c0=abar_prev.sqrt() * beta / (1 - abar), ct=(1 - beta).sqrt() * (1 - abar_prev) / (1 - abar),
                # p's variance: fixed_large β (β̃_1 at i = 0), fixed_small β̃ (β̃_1 at i = 0)
                model_var=torch.cat([post_var[1:2], beta[1:] if ddpm.var_type == 'fixed_large' else post_var[1:]]))


def gain(abar):
    """x̂0 = mu + k (x_t − √ᾱ mu): the slope k of the optimal denoiser."""
    return abar.sqrt() * S_DATA ** 2 / (abar * S_DATA ** 2 + 1 - abar)


CASES = [('linear', 20, 'fixed_large', None), ('cosine', 40, 'fixed_small', None),
         ('cosine', 40, 'fixed_large', 8), ('linear', 50, 'fixed_small', 10)]


@pytest.mark.parametrize('schedule,T,var_type,skip', CASES)
@pytest.mark.parametrize('clip', [False, True])
def test_each_term_is_its_closed_form_for_the_drawn_x_t(schedule, T, var_type, skip, clip):
    """Prior and every KL/decoder term of a few images against formulas written here, with x_t rebuilt from
    the documented noise order (each image's generator, steps S-1 … 0, float32 C×H×W)."""
    ddpm, model = tiny_ddpm(schedule, T, var_type, skip, clip)
    S, c = ddpm.num_steps, chain(ddpm)
    x0 = quantized_gaussian_images(3, (1, 2, 3), torch.Generator().manual_seed(0))
    x0[0, 0, 0] = torch.tensor([-1.0, 1.0, 0.6])                 # edge levels, and one the clip acts on
    calls = []
    res = variational_bound(ddpm, model, x0, generators(1, range(3)), progress=calls.append)
    assert calls == [1] * S and res['terms'].shape == (3, S)
    assert all(res[k].shape == (3,) and res[k].dtype == F64 for k in ('prior', 'vb', 'decoder', 'total'))

    prior = 0.5 * (-torch.log(1 - c['abar'][-1]) + (1 - c['abar'][-1]) + c['abar'][-1] * x0 ** 2 - 1)
    torch.testing.assert_close(res['prior'], prior.mean((1, 2, 3)) / LN2, rtol=1e-12, atol=1e-14)
    gens = generators(1, range(3))
    for i in reversed(range(S)):
        noise = torch.stack([torch.randn(1, 2, 3, generator=g) for g in gens]).to(F64)
        a = c['abar'][i]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        x0_hat = MU + gain(a) * (x_t - a.sqrt() * MU)
        if clip:
            x0_hat = x0_hat.clamp(-1, 1)
        mean_p, var_p = c['c0'][i] * x0_hat + c['ct'][i] * x_t, c['model_var'][i]
        if i > 0:
            mean_q, var_q = c['c0'][i] * x0 + c['ct'][i] * x_t, c['post_var'][i]
            nats = 0.5 * (torch.log(var_p / var_q) + var_q / var_p - 1) + (mean_q - mean_p) ** 2 / (2 * var_p)
        else:
            lo = torch.where(x0 < -0.999, -math.inf, (x0 - 1 / 255 - mean_p) / var_p.sqrt())
            hi = torch.where(x0 > 0.999, math.inf, (x0 + 1 / 255 - mean_p) / var_p.sqrt())
            nats = -torch.log(ndtr(hi) - ndtr(lo))
        torch.testing.assert_close(res['terms'][:, i], nats.mean((1, 2, 3)) / LN2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res['vb'], res['terms'][:, 1:].sum(1), rtol=1e-14, atol=0)
    torch.testing.assert_close(res['decoder'], res['terms'][:, 0], rtol=0, atol=0)
    torch.testing.assert_close(res['total'], res['prior'] + res['vb'] + res['decoder'], rtol=1e-14, atol=0)


def expected_bound(ddpm):
    """E over x0 (quantized_gaussian_pmf) and x_t of the bound in bits/dim, for the unclipped optimal denoiser."""
    c, p = chain(ddpm), quantized_gaussian_pmf()
    ex2, edev2 = (p * LEVELS ** 2).sum(), (p * (LEVELS - MU) ** 2).sum()         # E x0², E (x0 − mu)²
    a_T = c['abar'][-1]
    prior = 0.5 * (-torch.log(1 - a_T) + (1 - a_T) + a_T * ex2 - 1)
    # KL_i = ½ (log σp²/β̃ + β̃/σp² − 1) + c0² (x0 − x̂0)² / (2 σp²), with x0 − x̂0 = (1 − k√ᾱ)(x0 − mu) − k√(1−ᾱ) ε
    a, k = c['abar'][1:], gain(c['abar'][1:])
    err2 = (1 - k * a.sqrt()) ** 2 * edev2 + k ** 2 * (1 - a)
    var_p, var_q = c['model_var'][1:], c['post_var'][1:]
    kl = 0.5 * (torch.log(var_p / var_q) + var_q / var_p - 1) + c['c0'][1:] ** 2 * err2 / (2 * var_p)
    # decoder: x̂0 given x0 is Gaussian in ε; −log P(bin of x0 | N(x̂0, σ²)) integrated by Gauss–Hermite
    eps, w = (torch.from_numpy(v) for v in np.polynomial.hermite_e.hermegauss(80))
    w = w / w.sum()
    a0, k0, sd = c['abar'][0], gain(c['abar'][0]), c['model_var'][0].sqrt()
    x = LEVELS[:, None]
    x0_hat = MU + k0 * (a0.sqrt() * (x - MU) + (1 - a0).sqrt() * eps[None])
    nll = -discretized_gaussian_log_likelihood(x.expand_as(x0_hat), x0_hat, sd.log())
    decoder = (p * (nll * w).sum(1)).sum()
    return ((prior + kl.sum() + decoder) / LN2).item()


@pytest.mark.parametrize('schedule,T,var_type,skip', CASES)
def test_monte_carlo_bound_is_above_the_entropy_and_matches_its_expectation(schedule, T, var_type, skip):
    ddpm, model = tiny_ddpm(schedule, T, var_type, skip)
    n = 400
    x0 = quantized_gaussian_images(n, (1, 4, 4), torch.Generator().manual_seed(2))
    total = variational_bound(ddpm, model, x0, generators(3, range(n)))['total']
    mean, std_error = total.mean().item(), total.std().item() / math.sqrt(n)
    p = quantized_gaussian_pmf()
    entropy = -(p * p.log2()).sum().item()                   # bits per pixel of the data: every model's floor
    expected = expected_bound(ddpm)
    assert entropy < expected and entropy < mean
    assert abs(mean - expected) < 4 * std_error, (mean, expected, std_error)


def test_noise_is_per_image_so_batches_do_not_matter():
    ddpm, model = tiny_ddpm('cosine', 40, 'fixed_large', 8)
    x0 = quantized_gaussian_images(7, (1, 3, 3), torch.Generator().manual_seed(4))
    whole = variational_bound(ddpm, model, x0, generators(5, range(7)))
    again = variational_bound(ddpm, model, x0, generators(5, range(7)))
    parts = [variational_bound(ddpm, model, x0[a:b], generators(5, range(a, b))) for a, b in ((0, 3), (3, 4), (4, 7))]
    other = variational_bound(ddpm, model, x0, generators(6, range(7)))
    for key in ('prior', 'vb', 'decoder', 'total', 'terms'):
        assert torch.equal(whole[key], again[key])
        assert torch.equal(whole[key], torch.cat([part[key] for part in parts]))
    assert not torch.equal(whole['vb'], other['vb'])          # the generators decide the noise
    # both variances from one pass equal two separate passes
    small = DDPM(ddpm.table['betas'], 'pred_x0', 'fixed_small', clip_denoised=False, timesteps=ddpm.timesteps)
    both = variational_bounds([ddpm, small], model, x0, generators(5, range(7)))
    alone = variational_bound(small, model, x0, generators(5, range(7)))
    assert all(torch.equal(both[0][k], whole[k]) and torch.equal(both[1][k], alone[k]) for k in whole)
    with pytest.raises(ValueError, match='differ in var_type only'):
        variational_bounds([ddpm, tiny_ddpm('cosine', 40, 'fixed_small', 10)[0]], model, x0, generators(5, range(7)))


def test_model_log_variance_table():
    d = {v: from_config(dict(total_steps=10, beta_schedule='linear', beta_start=1e-4, beta_end=0.2,
                             objective='pred_eps', var_type=v)) for v in ('fixed_large', 'fixed_small')}
    beta, post = d['fixed_large'].table['betas'], d['fixed_large'].table['posterior_variance']
    torch.testing.assert_close(d['fixed_large'].table['model_log_variance'],
                               torch.log(torch.cat([post[1:2], beta[1:]])), rtol=1e-15, atol=0)
    torch.testing.assert_close(d['fixed_small'].table['model_log_variance'],
                               torch.log(torch.cat([post[1:2], post[1:]])), rtol=1e-15, atol=0)


# ----------------------------------------------------------------------------- evaluate_ddpm.py --nll

def nll_cli(weights, *extra, n=5, bs=2):
    return ['--nll', '-c', CONFIG, '--weights', str(weights), '--n_images', str(n), '--batch_size', str(bs),
            *TINY, *extra]


def run_nll(argv):
    try:
        return evaluate_ddpm.main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_cli_writes_the_bound_of_the_ema_weights(ckpt_dir, tmp_path, capsys):
    import datasets
    out = tmp_path / 'nll.json'
    res = run_nll(nll_cli(ckpt_dir, '--var_type', 'both', '--seed', '7', '--out', str(out)))
    stdout = capsys.readouterr().out
    assert json.loads(out.read_text()) == res
    assert res['n_images'] == 5 and res['split'] == 'test' and res['var_type'] == 'both' and res['num_steps'] == 20
    assert res['command'].startswith('evaluate_ddpm.py --nll -c ') and res['weights'] == ckpt_dir
    large, small = res['bits_per_dim']['fixed_large'], res['bits_per_dim']['fixed_small']
    for r in (large, small):
        assert abs(r['total'] - (r['prior'] + r['vb'] + r['decoder'])) < 1e-12
        assert len(r['per_step']) == 20 and abs(sum(r['per_step']) - r['vb'] - r['decoder']) < 1e-9
    assert large['prior'] == small['prior'] and large['decoder'] == small['decoder']    # same decoder variance
    assert large['vb'] != small['vb']
    assert 'NLL bound fixed_large: ' in stdout and 'NLL bound fixed_small: ' in stdout

    # the same number directly: EMA weights, test images scaled as in training, per-image generators
    cfg = tiny_cfg()
    model = build_model(cfg['model'])
    model.load_state_dict(torch.load(os.path.join(ckpt_dir, 'ema.pt'), weights_only=True)['model'])
    model.eval()
    x0 = datasets.to_unit_range(datasets.load_uint8(cfg['data'], 'test')[:5])
    gens = [torch.Generator().manual_seed(evaluate_ddpm.image_seed(7, k)) for k in range(5)]
    direct = variational_bound(from_config(cfg['diffusion'], var_type='fixed_large'), model, x0, gens)
    assert abs(direct['total'].mean().item() - large['total']) < 1e-5
    # --load_ema false scores the raw weights: another number
    raw = run_nll(nll_cli(ckpt_dir, '--seed', '7', '--load_ema', 'false'))
    assert raw['var_type'] == 'fixed_large' and abs(raw['bits_per_dim']['fixed_large']['total'] - large['total']) > 1e-3


def test_cli_bad_input_is_one_line(ckpt_dir, tmp_path, capsys):
    cases = [
        (['--nll', '-c', CONFIG, *TINY], r'the following arguments are required: --weights'),
        (nll_cli(ckpt_dir, '--split', 'valid'), r"unknown --split 'valid'; choose one of train, test"),
        (nll_cli(ckpt_dir, n=0), r'--n_images must be at least 1, got 0'),
        (nll_cli(ckpt_dir, bs=0), r'--batch_size must be at least 1, got 0'),
        (nll_cli(ckpt_dir, n=10001), r'--n_images 10001 is more than the 10000 images of the test split'),
        (nll_cli(ckpt_dir, '--var_type', 'learned'), r"unknown --var_type 'learned'; choose one of fixed_large, "
                                                     r"fixed_small, both"),
        (nll_cli(ckpt_dir, '--data.root', str(tmp_path / 'nowhere')), r'Fashion-MNIST test split not found'),
        (nll_cli(tmp_path / 'missing'), r'weights .*missing not found'),
        (nll_cli(ckpt_dir, '--out', str(tmp_path)), r'--out .* is a folder; pass a file name'),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            run_main(run_nll, argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith('error: '), err
        assert __import__('re').search(message, err), (message, err)


@pytest.mark.slow
def test_two_processes_give_the_same_json_as_one(ckpt_dir, tmp_path):
    """`accelerate launch --num_processes 2` on the CPU (batches [0 1] [4] and [2 3] on two gloo processes, one
    thread each) against one process in this one (one thread): the same numbers to the last digit."""
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
           '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
           '--main_process_port', str(free_port()), os.path.join(ROOT, 'evaluate_ddpm.py')]
    p = subprocess.run(cmd + nll_cli(ckpt_dir, '--out', str(tmp_path / 'two.json')), cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'on 2 process(es)' in p.stdout and p.stdout.count('NLL bound fixed_large') == 1
    assert '60/60' in p.stderr                  # the main process's bar: 20 steps × 3 batches, counted in rounds
    two = json.loads((tmp_path / 'two.json').read_text())
    one = run_nll(nll_cli(ckpt_dir))
    assert two['processes'] == 2 and one['processes'] == 1
    assert two['bits_per_dim'] == one['bits_per_dim']            # every digit, the per-step means too
