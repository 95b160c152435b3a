"""How accurate each sampler is with few steps, computed exactly on data with a closed-form optimal denoiser.

    python bench/sampler_accuracy.py [--mu 0.3] [--s 0.5] [--schedule linear]

For x0 ~ N(mu, s²) per pixel the optimal network is known in closed form, and with it (clipping off) every
sampler of `diffusions/` is an affine map of x_T and its step noises. So the mean and variance of its output
propagate exactly: each step is x_{i-1} = A_i x_i + c_i + σ_i z, with A_i and c_i read off the repo's own
step at x_i = 0 and 1, and Var_{i-1} = A_i² Var_i + σ_i². The deterministic multistep DPM-Solver++ is run
once on x_T ∈ {0, 1} to read off its affine map. x_T starts from the true marginal at the chain's first
step, so what is left is the samplers' own discretisation error. Prints the relative error of the output's
standard deviation (the table in docs/sampling.md).
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from diffusions import DDIM, DPMSolverPP, from_config  # noqa: E402


def optimal_eps_model(abar_full, mu, s):
    """ε*(x_t, t) for x0 ~ N(mu, s²), indexed by original timesteps t (B,)."""
    def model(x, t):
        a = abar_full[t].reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s * s + 1 - a)
    return model


def std_error(cfg, sampler, var_type, skip_type, steps, mu, s):
    """Relative error of the sampler's output std against s (exact, float64)."""
    full = from_config(cfg)
    model = optimal_eps_model(full.table['alphas_cumprod'], mu, s)
    ddpm = from_config(cfg, var_type=var_type, skip_type=skip_type if steps < cfg['total_steps'] else None,
                            skip_steps=steps if steps < cfg['total_steps'] else None)
    a_top = ddpm.table['alphas_cumprod'][-1].item()
    var = a_top * s * s + 1 - a_top                          # Var(x_T) under the true marginal
    probe = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    if sampler == 'dpm_solver++':
        out = DPMSolverPP(ddpm).sample(model, probe)
        return abs((out[1] - out[0]).item()) * math.sqrt(var) / s - 1
    step = DDIM(ddpm, 0.0).step if sampler == 'ddim' else None
    for i in reversed(range(ddpm.num_steps)):
        if step is not None:                                   # DDIM η = 0: deterministic affine step
            out, _ = step(model, probe, i)
            sigma = 0.0
        else:                                                  # DDPM: posterior mean, then σ_i z
            ii = torch.full((2,), i)
            x0, _ = ddpm.predict(model, probe, ii)
            out = ddpm.q_posterior_mean(x0, probe, ii)
            sigma = ddpm.table['sigmas'][i].item()
        A = (out[1] - out[0]).item()
        var = A * A * var + sigma * sigma
    return math.sqrt(var) / s - 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--mu', type=float, default=0.3)
    p.add_argument('--s', type=float, default=0.5)
    p.add_argument('--schedule', default='linear')
    p.add_argument('--steps', default='10,20,50,100')
    args = p.parse_args()
    cfg = dict(total_steps=1000, beta_schedule=args.schedule, beta_start=1e-4, beta_end=0.02,
               objective='pred_eps', var_type='fixed_large', clip_denoised=False)
    steps = [int(x) for x in args.steps.split(',')]
    rows = [('DDPM fixed_large (uniform)', 'ddpm', 'fixed_large', 'uniform'),
            ('DDPM fixed_small (uniform)', 'ddpm', 'fixed_small', 'uniform'),
            ('DDIM η = 0 (uniform)', 'ddim', None, 'uniform'), ('DDIM η = 0 (quad)', 'ddim', None, 'quad'),
            ('DPM-Solver++ (uniform)', 'dpm_solver++', None, 'uniform'),
            ('DPM-Solver++ (quad)', 'dpm_solver++', None, 'quad')]
    print(f"x0 ~ N({args.mu}, {args.s}²), {args.schedule} schedule, T = 1000: relative error of the samples' std")
    print('| steps (skip type) | ' + ' | '.join(map(str, steps)) + ' |')
    print('|---|' + '---|' * len(steps))
    for name, sampler, var_type, skip in rows:
        cells = [f'{100 * std_error(cfg, sampler, var_type, skip, n, args.mu, args.s):+.1f}%' for n in steps]
        print(f'| {name} | ' + ' | '.join(cells) + ' |')
    for var_type in ('fixed_large', 'fixed_small'):
        print(f'all 1000 steps, {var_type}: {100 * std_error(cfg, "ddpm", var_type, None, 1000, args.mu, args.s):+.2f}%')


if __name__ == '__main__':
    main()
