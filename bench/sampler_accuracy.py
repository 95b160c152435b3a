"""How accurate each sampler and spacing is with few steps, computed exactly on data with a closed-form denoiser.

    python bench/sampler_accuracy.py [--mu 0.3] [--s 0.5] [--schedule linear] [--steps 10,20,50,100]

For x0 ~ N(mu, s²) per pixel the optimal network is known in closed form, and with it (clipping off) every
sampler of `diffusions/` is an affine map of x_T and its step noises, so the mean and variance of its output
propagate exactly (diffusions/gaussian_oracle.py, read off the repo's own steps). x_T ~ N(0, I), as
sample_ddpm.py draws it, so a chain that starts below T - 1 pays for it. Prints, per sampler and spacing, the
error of the output mean and the relative error of its standard deviation (the tables in docs/sampling.md).
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from diffusions import SKIP_TYPES, from_config, make_sampler  # noqa: E402
from diffusions.gaussian_oracle import exact_output_moments, gaussian_denoiser  # noqa: E402


def errors(cfg, sampler, var_type, skip_type, steps, mu, s):
    """(mean error, relative std error) of the sampler's output against N(mu, s²)."""
    model = gaussian_denoiser(from_config(cfg).table['alphas_cumprod'], mu, s)
    full = steps == cfg['total_steps']
    ddpm = from_config(cfg, var_type=var_type, skip_type=None if full else skip_type, skip_steps=None if full else steps)
    mean, var = exact_output_moments(make_sampler(sampler, ddpm), model)
    return mean - mu, math.sqrt(var) / s - 1


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
    samplers = [('DDPM fixed_large', 'ddpm', 'fixed_large'), ('DDPM fixed_small', 'ddpm', 'fixed_small'),
                ('DDIM η = 0', 'ddim', None), ('DPM-Solver++', 'dpm_solver++', None)]
    print(f"x0 ~ N({args.mu}, {args.s}²), {args.schedule} schedule, T = 1000, x_T ~ N(0, I): error of the "
          f"samples' mean / relative error of their std")
    print('| sampler (spacing) | ' + ' | '.join(map(str, steps)) + ' |')
    print('|---|' + '---|' * len(steps))
    for name, sampler, var_type in samplers:
        for skip in SKIP_TYPES:
            cells = []
            for n in steps:
                dm, ds = errors(cfg, sampler, var_type, skip, n, args.mu, args.s)
                cells.append(f'{dm:+.3f} / {100 * ds:+.1f}%')
            print(f'| {name} ({skip}) | ' + ' | '.join(cells) + ' |')
    for var_type in ('fixed_large', 'fixed_small'):
        dm, ds = errors(cfg, 'ddpm', var_type, None, 1000, args.mu, args.s)
        print(f'all 1000 steps, {var_type}: {dm:+.4f} / {100 * ds:+.2f}%')


if __name__ == '__main__':
    main()
