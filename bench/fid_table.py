"""A FID table over samplers and step counts for one checkpoint, like the DDPM paper's CIFAR-10 table.

    python bench/fid_table.py -c CONFIG --weights EXP_DIR/ckpt/stepNNNNNNN --out-dir runs/fid-table \
        (--ref-stats STATS.npz | --ref-config CONFIG) [--feature-extractor-weights W] [--n-samples 10000] \
        [--micro-batch 1000] [--rows ROWS] [--launch "accelerate launch --mixed_precision bf16"] \
        [--compile reduce-overhead] [--key.sub value ...]

Each row runs the real `sample_ddpm.py` (through `--launch`, so on any number of GPUs) with `--save_npz` into
OUT_DIR/ROW/, then scores OUT_DIR/ROW/samples.npz with `utils.fid.compute_fid` against the reference
statistics. Rows already sampled are resumed or skipped by the sampler itself, so an interrupted table
continues where it stopped. Writes OUT_DIR/fid_table.json and OUT_DIR/fid_table.md. Config overrides
(`--key.sub value`) are passed on to the sampler. `--stage sample` runs only the samplers (e.g. one process per
GPU, each with its own `--rows`, all into one OUT_DIR); `--stage score` then scores what they wrote.

ROWS is a comma list of SAMPLER:VAR_TYPE:STEPS[:SPACING] (VAR_TYPE '-' for DDIM / DPM-Solver++); the default
is the paper's table plus the fast samplers: fixed_large and fixed_small at 1000/100/50/10 steps, DDIM (eta 0)
at 100/50/10, DPM-Solver++ at 20/10. Steps equal to the config's T run the full chain; fewer are spaced by
SPACING (a `--skip_type` of sample_ddpm.py: uniform, uniform2, quad, trailing, logsnr), by default the
sampler's own (`diffusions.DEFAULT_SKIP_TYPES`: uniform for DDPM, logsnr for DDIM and DPM-Solver++).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.config import ArgumentParser, apply_overrides, load_config  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.files import atomic_write  # noqa: E402

DEFAULT_ROWS = ('ddpm:fixed_large:1000,ddpm:fixed_large:100,ddpm:fixed_large:50,ddpm:fixed_large:10,'
                'ddpm:fixed_small:1000,ddpm:fixed_small:100,ddpm:fixed_small:50,ddpm:fixed_small:10,'
                'ddim:-:100,ddim:-:50,ddim:-:10,dpm_solver++:-:20,dpm_solver++:-:10')


def parse_rows(text: str, total_steps: int) -> list:
    from diffusions import SKIP_TYPES, default_skip_type
    rows = []
    for item in text.split(','):
        try:
            sampler, var_type, steps, *spacing = item.strip().split(':')
            steps = int(steps)
            if len(spacing) > 1:
                raise ValueError
        except ValueError:
            raise UserError(f"--rows item {item!r} is not SAMPLER:VAR_TYPE:STEPS[:SPACING] "
                            f"(e.g. ddpm:fixed_small:100, dpm_solver++:-:10:logsnr)") from None
        if spacing and spacing[0] not in SKIP_TYPES:
            raise UserError(f"--rows item {item!r}: unknown spacing {spacing[0]!r}; choose one of {', '.join(SKIP_TYPES)}")
        steps = min(steps, total_steps)
        name = f"{sampler}-{var_type}-{steps}" if var_type != '-' else f"{sampler}-{steps}"
        name += f"-{spacing[0]}" if spacing else ''
        skip_type = None if steps == total_steps else (spacing[0] if spacing else default_skip_type(sampler))
        rows.append({'name': name.replace('+', 'p'), 'sampler': sampler, 'var_type': None if var_type == '-' else var_type,
                     'steps': steps, 'skip_type': skip_type})
    return rows


def sample_command(args, overrides, row, total_steps, out):
    cmd = [*shlex.split(args.launch), os.path.join(ROOT, 'sample_ddpm.py'), '-c', args.config, *overrides,
           '--weights', args.weights, '--n_samples', str(args.n_samples), '--micro_batch', str(args.micro_batch),
           '--save_dir', out, '--sampler', row['sampler'], '--seed', str(args.seed), '--save_npz']
    if row['var_type']:
        cmd += ['--var_type', row['var_type']]
    if row['skip_type']:
        cmd += ['--skip_type', row['skip_type'], '--skip_steps', str(row['steps'])]
    if args.compile:
        cmd += ['--compile', args.compile]
    return cmd


def sample_row(args, overrides, row, total_steps):
    """Run one row's sampler; record its command and wall time in OUT_DIR/ROW/sample_log.json."""
    out = os.path.join(args.out_dir, row['name'])
    cmd = sample_command(args, overrides, row, total_steps, out)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ['(no output)'])[-1]
        raise UserError(f"sampling row {row['name']} failed: {tail}")
    cmd, seconds = ' '.join(shlex.quote(c) for c in cmd), time.time() - t0
    atomic_write(os.path.join(out, 'sample_log.json'), lambda f: json.dump({'command': cmd, 'seconds': seconds}, f),
                 mode='w')
    print(f"{row['name']:28s} sampled in {seconds:6.1f} s", flush=True)
    return cmd, seconds


def read_sample_log(out):
    path = os.path.join(out, 'sample_log.json')
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(out, 'samples.npz')):
        raise UserError(f"--stage score: {out} has no finished samples (samples.npz and sample_log.json); "
                        f"run the row with --stage sample or all first")
    with open(path) as f:
        log = json.load(f)
    return log['command'], log['seconds']


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-c', '--config', required=True)
    p.add_argument('--weights', required=True, help='checkpoint folder (EMA weights are used) or weights file')
    p.add_argument('--out-dir', required=True)
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument('--ref-stats', help='reference statistics .npz (mu/sigma or mu/sigma_triu)')
    ref.add_argument('--ref-config', help="reference = this config's training set (statistics cached)")
    p.add_argument('--feature-extractor-weights', default=None)
    p.add_argument('--dims', type=int, default=2048, help='Inception feature size (2048 is standard FID)')
    p.add_argument('--n-samples', type=int, default=10000)
    p.add_argument('--micro-batch', type=int, default=1000)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--rows', default=DEFAULT_ROWS)
    p.add_argument('--launch', default=sys.executable, help='how to start sample_ddpm.py, e.g. "accelerate launch '
                                                            '--multi_gpu --num_processes 2 --mixed_precision bf16"')
    p.add_argument('--compile', default=None, help='passed to sample_ddpm.py --compile (e.g. reduce-overhead)')
    p.add_argument('--stage', choices=('all', 'sample', 'score'), default='all',
                   help="sample: only run the samplers (no Inception needed, e.g. one process per GPU, each with "
                        "its own --rows); score: only score the OUT_DIR/ROW/samples.npz already there; all: both")
    args, overrides = p.parse_known_args(argv)
    from utils.fid import cached_reference, check_weights, compute_fid, load_stats
    import numpy as np
    import torch
    import datasets

    total_steps = apply_overrides(load_config(args.config), overrides)['diffusion']['total_steps']
    rows = parse_rows(args.rows, total_steps)
    os.makedirs(args.out_dir, exist_ok=True)
    if args.stage == 'sample':
        for row in rows:
            sample_row(args, overrides, row, total_steps)
        return
    check_weights(args.feature_extractor_weights)
    if args.ref_stats:
        ref = load_stats(args.ref_stats, args.dims)
    else:
        data_cfg = load_config(args.ref_config)['data']
        ref = cached_reference(data_cfg, 'train', lambda: datasets.load_uint8(data_cfg, 'train'),
                               args.feature_extractor_weights, dims=args.dims)['stats']
    results = []
    for row in rows:
        out = os.path.join(args.out_dir, row['name'])
        if args.stage == 'all':
            cmd, sample_s = sample_row(args, overrides, row, total_steps)
        else:
            cmd, sample_s = read_sample_log(out)
        with np.load(os.path.join(out, 'samples.npz')) as f:
            images = torch.from_numpy(f['arr_0']).permute(0, 3, 1, 2).contiguous()
        if len(images) != args.n_samples:
            raise UserError(f"{out}/samples.npz holds {len(images)} images, not --n-samples {args.n_samples}")
        t0 = time.time()
        fid = compute_fid(images, ref, weights_path=args.feature_extractor_weights, batch_size=250, dims=args.dims)
        results.append(dict(row, fid=fid, n_samples=len(images), sample_seconds=sample_s, fid_seconds=time.time() - t0,
                            command=cmd))
        print(f"{row['name']:28s} FID {fid:8.3f}   (sampling {sample_s:6.1f} s)", flush=True)
    summary = {'config': args.config, 'weights': args.weights, 'reference': args.ref_stats or args.ref_config,
               'feature_extractor_weights': args.feature_extractor_weights, 'dims': args.dims, 'rows': results}
    atomic_write(os.path.join(args.out_dir, 'fid_table.json'), lambda f: json.dump(summary, f, indent=1), mode='w')
    atomic_write(os.path.join(args.out_dir, 'fid_table.md'), lambda f: f.write(markdown(results)), mode='w')
    print(markdown(results))


def markdown(results) -> str:
    lines = ['| sampler | variance | steps | spacing | FID | samples | sampling s |', '|---|---|---|---|---|---|---|']
    for r in results:
        lines.append(f"| {r['sampler']} | {r['var_type'] or '-'} | {r['steps']} | {r.get('skip_type') or '-'} | "
                     f"{r['fid']:.2f} | {r['n_samples']} | {r['sample_seconds']:.0f} |")
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    run_main(main)
