"""Multi-GPU scaling of training and sampling on one host, against 1 GPU in the same run.

    python bench/scaling.py --gpus 1,2 --out bench/results/scaling.json

Training (CIFAR-10 config, fast mode) runs through `accelerate launch --multi_gpu --num_processes N
train_ddpm.py`, at a fixed global batch of 128 and at a fixed per-GPU batch of 128 (global 128·N); steps/s are
the median of the log windows after warm-up (as in bench.py); `--global-gpus` picks the N that get the
fixed-global point, and `--small-batch-baseline` also runs 1 GPU at that point's per-GPU batch (128/N), to show
what the smaller batch alone saves. Efficiency = images/s on N GPUs / (N × images/s
on 1 GPU). Sampling runs `sample_ddpm.py` on N processes (bf16, DDIM, `--sample-steps` steps) and is timed as the
whole command minus the same command's time when every image already exists (start-up, model load, compile
are subtracted); the PNGs of every N are compared byte for byte with those of 1 GPU.

Same training on N GPUs (`--only equality`): the CIFAR-10 config in fp32 eager with dropout 0 and data on the
GPU trains 40 steps on 1 GPU straight, and on N GPUs as 20 steps + a resume to 40 (global batch 128 both), with
EMA sample grids every 20 steps and, given `--fid-weights/--fid-ref-stats`, a FID every 20 steps (the
extra work on the main process that the others wait for). The step-40 checkpoints (model, EMA, optimizer) are
compared tensor by tensor: the largest difference, and the norm of the difference as a fraction of how far the
1-GPU weights moved between steps 20 and 40; the step-40 grids pixel by pixel.
NCCL's NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends), as the lending machines require.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, run_training, summarize_training, write_fake_cifar  # noqa: E402

os.environ.update(NCCL_NVLS_ENABLE='0', TORCH_SYMM_MEM_DISABLE_MULTICAST='1', NVSHMEM_DISABLE_NVLS='1')
CONFIG = os.path.join(ROOT, 'configs/ddpm_cifar10.yaml')


def launcher(n, mixed_precision=None):
    mp = ('--mixed_precision', mixed_precision) if mixed_precision else ()
    if n > 1:
        return ('accelerate', 'launch', '--multi_gpu', '--num_processes', str(n), '--main_process_port', str(29500 + n), *mp)
    return ('accelerate', 'launch', '--num_processes', '1', *mp) if mp else (sys.executable,)


def train_point(n, global_batch, root, steps, tmp, overrides=()):
    windows, wall = run_training(CONFIG, root, 'fast', steps, 50, os.path.join(tmp, f'train-{n}-{global_batch}'),
                                 extra=['--train.batch_size', str(global_batch), *overrides], launcher=launcher(n))
    return dict(summarize_training(windows), gpus=n, global_batch=global_batch, wall_s=wall)


def sample_point(n, weights, n_images, steps, micro_batch, tmp):
    out = os.path.join(tmp, f'samples-{n}')
    cmd = [*launcher(n, 'bf16'), os.path.join(ROOT, 'sample_ddpm.py'), '-c', CONFIG, '--weights', weights,
           '--n_samples', str(n_images), '--micro_batch', str(micro_batch), '--save_dir', out, '--sampler', 'ddim',
           '--skip_steps', str(steps)]
    times = []
    for _ in range(2):              # second run: everything exists, so it measures start-up alone
        t0 = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.time() - t0)
    pngs = sorted(f for f in os.listdir(out) if f.endswith('.png'))
    digest = hashlib.sha256(b''.join(open(os.path.join(out, f), 'rb').read() for f in pngs)).hexdigest()
    sec = times[0] - times[1]
    return {'gpus': n, 'images': n_images, 'steps': steps, 'micro_batch': micro_batch, 'seconds': sec,
            'img_per_s': n_images / sec, 'startup_s': times[1], 'png_sha256': digest}


def equality(n, root, tmp, fid_weights=None, fid_ref_stats=None, overrides=()):
    """1 GPU vs n GPUs (with a resume) on the same global batch: how far apart the checkpoints and grids are."""
    import torch
    from torchvision.io import read_image
    extra = ['--data.on_gpu', 'true', '--train.mixed_precision', 'no', '--train.compile', 'false',
             '--model.params.dropout', '0.0', '--train.save_freq', '20', '--train.sample_freq', '20',
             '--train.n_samples', '16', '--train.keep_ckpts', '5', *overrides]
    if fid_weights:
        extra += ['--train.fid_freq', '20', '--train.fid_n_samples', '1000', '--train.fid_steps', '20',
                  '--train.fid_weights', fid_weights, '--train.fid_ref_stats', fid_ref_stats]
    runs = {}
    for gpus, legs in ((1, (40,)), (n, (20, 40))):
        exp = os.path.join(tmp, f'equal-{gpus}')
        t0 = time.time()
        for k, steps in enumerate(legs):
            resume = ['--train.resume', 'latest'] if k else []
            run_training(CONFIG, root, 'plain', steps, 10, exp, extra=extra + resume, launcher=launcher(gpus))
        log = open(os.path.join(exp, 'output.log')).read()
        runs[gpus] = {'exp': exp, 'wall_s': time.time() - t0, 'fid': [float(v) for v in re.findall(r'fid ([\d.]+)', log)]}
    load = lambda gpus, step, name: torch.load(os.path.join(runs[gpus]['exp'], 'ckpt', f'step{step:07d}', name),
                                               map_location='cpu', weights_only=True)
    out = {'gpus': n, 'wall_s': {g: r['wall_s'] for g, r in runs.items()}, 'fid': {g: r['fid'] for g, r in runs.items()}}
    for name in ('model.pt', 'ema.pt'):
        a, b, a20 = load(1, 40, name), load(n, 40, name), load(1, 20, name)
        a, b, a20 = (d.get('model', d) if name == 'ema.pt' else d for d in (a, b, a20))
        keys = [k for k in a if torch.is_floating_point(a[k])]
        diff = torch.cat([(a[k] - b[k]).flatten().double() for k in keys])
        moved = torch.cat([(a[k] - a20[k]).flatten().double() for k in keys])
        out[name] = {'max_abs_diff': diff.abs().max().item(), 'diff_norm_over_20_step_change': (diff.norm() / moved.norm()).item(),
                     'max_abs_weight': max(a[k].abs().max().item() for k in keys)}
    oa, ob = load(1, 40, 'optimizer.pt'), load(n, 40, 'optimizer.pt')
    out['optimizer.pt'] = {'max_abs_diff_exp_avg': max((oa['state'][i]['exp_avg'] - ob['state'][i]['exp_avg']).abs().max().item()
                                                       for i in oa['state']),
                           'same_step_count': all(float(oa['state'][i]['step']) == float(ob['state'][i]['step']) for i in oa['state'])}
    ga, gb = (read_image(os.path.join(runs[g]['exp'], 'samples', 'step0000040.png')).int() for g in (1, n))
    out['grid_step40'] = {'max_pixel_diff': (ga - gb).abs().max().item(), 'frac_pixels_equal': (ga == gb).float().mean().item()}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=400)
    p.add_argument('--sample-images', type=int, default=4000)
    p.add_argument('--sample-steps', type=int, default=100)
    p.add_argument('--micro-batch', type=int, default=500)
    p.add_argument('--gpus', default='1,2')
    p.add_argument('--out', default='bench/results/scaling.json')
    p.add_argument('--only', default='train,sample,equality', help='comma list of parts: train,sample,equality')
    p.add_argument('--fixed', choices=('global', 'per-gpu', 'both'), default='both',
                   help='training points: a fixed global batch of 128, 128 images per GPU, or both')
    p.add_argument('--global-gpus', default=None,
                   help='comma list: the N that get the fixed-global-batch point (default: every N of --gpus)')
    p.add_argument('--small-batch-baseline', action='store_true',
                   help='also train 1 GPU at each fixed-global point\'s per-GPU batch (128/N)')
    p.add_argument('--overrides', default='', help='config overrides added to the fast training runs, e.g. '
                                                   '"--train.compile_tuning false"')
    p.add_argument('--fid-weights', default=None, help='Inception weights: adds a training FID to the equality runs')
    p.add_argument('--fid-ref-stats', default=None, help='reference statistics .npz for that FID')
    args = p.parse_args()
    gpus = [int(g) for g in args.gpus.split(',')]
    global_gpus = [int(g) for g in args.global_gpus.split(',')] if args.global_gpus else gpus
    parts = args.only.split(',')
    tmp = tempfile.mkdtemp(prefix='ddpm-scaling-')
    root = os.path.join(tmp, 'cifar10')
    write_fake_cifar(root)
    res = {'train_fixed_global': [], 'train_fixed_per_gpu': [], 'train_1gpu_per_gpu_batch': [], 'sample': [],
           'equality': [], 'errors': []}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def attempt(key, fn, *a):      # one failed point must not cost the others; partial results are kept
        try:
            res[key].append(fn(*a))
            print(key, res[key][-1], flush=True)
        except (RuntimeError, subprocess.CalledProcessError, OSError, KeyError) as e:
            res['errors'].append(f'{key} {a[:2]}: {str(e)[-3000:]}')
            print('FAILED', key, a[:2], str(e)[-3000:], flush=True)
        json.dump(res, open(args.out, 'w'), indent=1)
    if 'equality' in parts:
        for n in gpus[1:]:
            attempt('equality', equality, n, root, tmp, args.fid_weights, args.fid_ref_stats)
    if 'train' in parts:
        for n in gpus:
            over = args.overrides.split()
            fixed_global = args.fixed != 'per-gpu' and n in global_gpus
            if n == 1 or fixed_global:
                attempt('train_fixed_global', train_point, n, 128, root, args.steps, tmp, over)
            if n > 1 and args.fixed != 'global':
                attempt('train_fixed_per_gpu', train_point, n, 128 * n, root, args.steps, tmp, over)
            if n > 1 and fixed_global and args.small_batch_baseline and 128 % n == 0:
                # 1 GPU at the per-GPU batch of the fixed-global-batch point: how much of a step the smaller batch saves
                attempt('train_1gpu_per_gpu_batch', train_point, 1, 128 // n, root, args.steps, tmp, over)
    if 'sample' in parts:
        # weights for sampling: a short 1-GPU run's checkpoint (content does not matter for speed or equality)
        exp = os.path.join(tmp, 'weights')
        run_training(CONFIG, root, 'plain', 2, 1, exp)
        ck = os.path.join(exp, 'ckpt', open(os.path.join(exp, 'ckpt', 'latest')).read().strip())
        for n in gpus:
            attempt('sample', sample_point, n, ck, args.sample_images, args.sample_steps, args.micro_batch, tmp)
    one = next((r for r in res['train_fixed_global'] if r['gpus'] == 1), None)
    for r in res['train_fixed_global'] + res['train_fixed_per_gpu']:     # scaling efficiency: multi-GPU points only
        if one:
            r['efficiency'] = r['images_per_s'] / (r['gpus'] * one['images_per_s'])
    s1 = next((r for r in res['sample'] if r['gpus'] == 1), None)
    for r in res['sample']:
        if s1:
            r['efficiency'] = r['img_per_s'] / (r['gpus'] * s1['img_per_s'])
            r['same_pngs_as_1_gpu'] = r['png_sha256'] == s1['png_sha256']
    json.dump(res, open(args.out, 'w'), indent=1)
    print(f"{'run':36s} {'steps/s':>8s} {'img/s':>8s} {'eff':>6s}")
    for key in ('train_fixed_global', 'train_fixed_per_gpu', 'train_1gpu_per_gpu_batch'):
        for r in res[key]:
            print(f"train {r['gpus']} GPU, global batch {r['global_batch']:<5d}{'':9s} {r['steps_per_s']:8.2f} "
                  f"{r['images_per_s']:8.0f} " + (f"{r['efficiency']:6.1%}" if 'efficiency' in r else ''))
    for r in res['sample']:
        print(f"sample {r['gpus']} GPU, DDIM {r['steps']} steps{'':11s} {'':8s} {r['img_per_s']:8.1f} "
              f"{r.get('efficiency', float('nan')):6.1%}  same PNGs: {r.get('same_pngs_as_1_gpu')}")
    for r in res['equality']:
        print(f"1 vs {r['gpus']} GPUs, 40 steps: " + json.dumps({k: v for k, v in r.items() if k != 'gpus'}))
    for e in res['errors']:
        print('error:', e[:500])


if __name__ == '__main__':
    main()
