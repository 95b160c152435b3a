"""GPU benchmark: training and sampling speed, plain vs the recommended fast setting, in one run.

    python bench/bench.py --out bench/results/RUN/bench.json [--configs cifar10,mnist] [--modes plain,fast]

Training runs the real `train_ddpm.py` command (a subprocess per mode): its log reports steps/s over each
`print_freq` window, timed on the host after the window's one device sync; the first two windows (compile,
warm-up) are dropped and the median of the rest is reported. Data: synthetic images written in the real on-disk
formats (CIFAR-10 python pickles, MNIST IDX) unless --mnist-root points at real IDX files, read by the real
dataset code. A discarded warm-up run precedes each config's timed runs (the first run of a call read low).

Sampling is timed in-process on a slice of the 1000-step chain (`--sample-steps` reverse steps after warm-up,
CUDA-event timing), with the model prepared as `sample_ddpm.py` prepares it, and extrapolated to the whole chain.

Training modes (the overrides each adds to the config; MODES below):
  plain            train.fast false: eager fp32, DataLoader workers (the reference path)
  fast             train.fast true: the recommended setting (README, docs/benchmarks.md)
  fast-no<switch>  fast with one switch turned back off, to measure what it is worth: -noflat
                   (train.flat_params), -nobf16w (train.bf16_weights), -notune (train.compile_tuning), -nolayout
                   (train.compile_force_layout_opt), -nographs (compile_mode default: no CUDA graphs), -nocompile
                   (eager bf16), -dataloader (data.on_gpu false)
Sampling modes: plain (eager fp32), fast (sample_ddpm.py --fast: bf16, compiled with CUDA graphs, frozen weights,
per-channel GroupNorm statistics, tuned kernels), fast-notune.
Same results: the MNIST runs double as a loss-curve check (plain vs fast, last windows), and the plain run's EMA
weights sample DDIM-50 in fp32 and in bf16 from the same noise (mean pixel difference, PSNR).
"""
import argparse
import gzip
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusions import from_config  # noqa: E402
from models import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402

MODES = {
    'plain': {'train.fast': 'false'},
    'fast': {'train.fast': 'true'},
    'fast-noflat': {'train.fast': 'true', 'train.flat_params': 'false'},
    'fast-nobf16w': {'train.fast': 'true', 'train.bf16_weights': 'false'},
    'fast-notune': {'train.fast': 'true', 'train.compile_tuning': 'false'},
    'fast-nolayout': {'train.fast': 'true', 'train.compile_force_layout_opt': 'false'},
    'fast-nographs': {'train.fast': 'true', 'train.compile_mode': 'default'},
    'fast-nocompile': {'train.fast': 'true', 'train.compile': 'false'},
    'fast-dataloader': {'train.fast': 'true', 'data.on_gpu': 'false'},
}


def write_fake_cifar(root, n=50000):
    d = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    per = n // 5
    for k in range(1, 6):
        with open(os.path.join(d, f'data_batch_{k}'), 'wb') as f:
            pickle.dump({b'data': rng.integers(0, 256, (per, 3072), dtype=np.uint8), b'labels': [0] * per}, f)
    with open(os.path.join(d, 'test_batch'), 'wb') as f:
        pickle.dump({b'data': rng.integers(0, 256, (1000, 3072), dtype=np.uint8), b'labels': [0] * 1000}, f)


def write_fake_idx(root, n=60000):
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, m in (('train-images-idx3-ubyte.gz', n), ('t10k-images-idx3-ubyte.gz', 1000)):
        header = np.array([2051, m, 28, 28], dtype='>i4').tobytes()
        with gzip.open(os.path.join(root, name), 'wb', compresslevel=1) as f:
            f.write(header + rng.integers(0, 256, (m, 28, 28), dtype=np.uint8).tobytes())


def run_training(config, data_root, mode, steps, print_freq, exp_dir, extra=(), launcher=(sys.executable,)):
    """Run train_ddpm.py (through `launcher`, e.g. accelerate launch); return per-window stats from its log."""
    over = dict(MODES[mode], **{'data.root': data_root, 'train.n_steps': steps, 'train.print_freq': print_freq,
                                'train.save_freq': 10 ** 9, 'train.n_samples': 0, 'data.num_workers': 8})
    args = [x for k, v in over.items() for x in (f'--{k}', str(v))]
    cmd = [*launcher, os.path.join(ROOT, 'train_ddpm.py'), '-c', config, '-e', exp_dir, *args, *extra]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}')
    windows = []
    for line in open(os.path.join(exp_dir, 'output.log')):
        m = re.search(r'step (\d+): (.*)', line)
        if m:
            windows.append({'step': int(m.group(1)), **{k: float(v) for k, v in re.findall(r'(\w+) ([-\d.e+na]+)', m.group(2))}})
    return windows, time.time() - t0


def summarize_training(windows):
    timed = windows[2:] if len(windows) > 3 else windows[1:]
    return {'steps_per_s': statistics.median(w['steps_per_s'] for w in timed),
            'images_per_s': statistics.median(w['images_per_s'] for w in timed),
            'max_mem_gib': max(w.get('max_mem_gib', 0.0) for w in windows),
            'windows': len(timed)}


SAMPLE_MODES = {'plain': None, 'fast': True, 'fast-notune': False}     # None: eager fp32; else compile tuning


@torch.no_grad()
def time_sampling(cfg, mode, batch, steps, device):
    """Seconds per reverse step of the full-T chain at `batch` images (median over 3 repeats), with the model
    prepared as sample_ddpm.py prepares it (`--fast`: compile_for_sampling, bf16 autocast)."""
    from models.fast import compile_for_sampling
    tune = SAMPLE_MODES[mode]
    torch._dynamo.reset()                              # each mode compiles afresh
    model = build_model(cfg['model']).to(device).eval().requires_grad_(False)
    net = model if tune is None else compile_for_sampling(model, 'reduce-overhead', tune=tune)
    diffusion = from_config(cfg['diffusion'])
    shape = (batch, cfg['data']['img_channels'], cfg['data']['img_size'], cfg['data']['img_size'])
    x = torch.randn(shape, device=device)
    g = torch.Generator(device).manual_seed(0)

    def run(n, x):
        for i in range(diffusion.num_steps - 1, diffusion.num_steps - 1 - n, -1):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tune is not None):
                x, _ = diffusion.p_sample(net, x, i, g)
        return x
    run(3, x)                                      # compile / warm-up
    times = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(steps, x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000 / steps)
    return statistics.median(times)


def loss_agreement(plain, fast, tail=0.25):
    """Compare two loss curves (lists of (step, window-mean loss)) over their last `tail` fraction.

    Returns both means, the difference, and the window-to-window standard deviation of each tail as the
    noise scale: curves agree within noise when |difference| is a small multiple of that std / sqrt(n).
    """
    def tail_stats(curve):
        vals = [l for _, l in curve][-max(2, int(len(curve) * tail)):]
        return statistics.mean(vals), statistics.stdev(vals), len(vals)
    (mp, sp, n), (mf, sf, _) = tail_stats(plain), tail_stats(fast)
    se = ((sp ** 2 + sf ** 2) / n) ** 0.5
    return {'plain_mean': mp, 'fast_mean': mf, 'diff': mf - mp, 'std_err_of_diff': se,
            'diff_in_std_errs': (mf - mp) / se if se > 0 else float('inf'), 'windows': n}


@torch.no_grad()
def sampling_agreement(cfg, step_dir, device, n=256, steps=50):
    """Same EMA weights, same noise, DDIM (eta 0) for `steps` steps in fp32 and under bf16 autocast."""
    from diffusions import make_sampler
    from utils.checkpoint import load_model_weights
    from utils.images import quantize_uint8
    model = build_model(cfg['model']).to(device).eval()
    model.load_state_dict(load_model_weights(step_dir, use_ema=True))
    sampler = make_sampler('ddim', from_config(cfg['diffusion'], skip_type='uniform', skip_steps=steps))
    shape = (n, cfg['data']['img_channels'], cfg['data']['img_size'], cfg['data']['img_size'])
    noise = torch.randn(shape, generator=torch.Generator(device).manual_seed(0), device=device)
    to255 = lambda x: quantize_uint8(x).float()      # the 8-bit pixels a PNG would hold
    a = to255(sampler.sample(model, noise))
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        b = to255(sampler.sample(model, noise))
    mse = (a - b).pow(2).mean().item()
    return {'n': n, 'sampler': f'ddim eta 0, {steps} steps', 'mean_abs_diff_0_255': (a - b).abs().mean().item(),
            'psnr_db': 10 * np.log10(255 ** 2 / mse) if mse > 0 else float('inf'),
            'frac_pixels_within_2_levels': ((a - b).abs() <= 2).float().mean().item()}


def model_gflops_per_image(cfg, device, by_op=False):
    """Forward GFLOPs of the UNet for one image (torch.utils.flop_counter; multiply-add = 2 FLOPs); with
    `by_op`, a dict {aten op name: GFLOPs} instead of the total."""
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model(cfg['model']).to(device)
    x = torch.randn(1, cfg['data']['img_channels'], cfg['data']['img_size'], cfg['data']['img_size'], device=device)
    with FlopCounterMode(display=False) as fc:
        model(x, torch.zeros(1, dtype=torch.long, device=device))
    if by_op:
        return {str(op): n / 1e9 for op, n in fc.get_flop_counts()['Global'].items()}
    return fc.get_total_flops() / 1e9


def matmul_tflops(device, n=8192):
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n ** 3 * 20 / (start.elapsed_time(end) / 1000) / 1e12


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='bench/results.json')
    p.add_argument('--train-steps', type=int, default=600)
    p.add_argument('--print-freq', type=int, default=50)
    p.add_argument('--sample-batch', type=int, default=500)
    p.add_argument('--sample-steps', type=int, default=20)
    p.add_argument('--only', default='', help='comma list of parts: matmul,train,sample,agree')
    p.add_argument('--modes', default='plain,fast', help=f'training modes, of {list(MODES)}')
    p.add_argument('--sample-modes', default='plain,fast', help=f'sampling modes, of {list(SAMPLE_MODES)}')
    p.add_argument('--configs', default='cifar10,mnist')
    p.add_argument('--skip', default='', help='comma list of config/mode training runs to leave out, e.g. cifar10/plain')
    p.add_argument('--mnist-root', default=None,
                   help='real MNIST-format IDX files for the MNIST config (e.g. Fashion-MNIST); default: synthetic')
    p.add_argument('--mnist-steps', type=int, default=2000, help='MNIST runs double as the loss-curve check')
    p.add_argument('--warmup-run', type=int, default=200,
                   help="steps of a discarded run of each config's first mode before the timed ones (0: none): the "
                        "first training run of a bench call read 4-12%% low in 4 of 6 calls")
    args = p.parse_args()
    assert torch.cuda.is_available(), 'the benchmark needs a CUDA GPU'
    device = torch.device('cuda')
    parts = set(args.only.split(',')) if args.only else {'matmul', 'train', 'sample', 'agree'}
    modes = args.modes.split(',')
    res = {'card': torch.cuda.get_device_name(0), 'torch': torch.__version__, 'argv': sys.argv[1:],
           'train': {}, 'sample': {}}
    tmp = tempfile.mkdtemp(prefix='ddpm-bench-')
    cifar_root, mnist_root = os.path.join(tmp, 'cifar10'), os.path.join(tmp, 'mnist')
    write_fake_cifar(cifar_root)
    if args.mnist_root:
        mnist_root = os.path.abspath(args.mnist_root)
    else:
        write_fake_idx(mnist_root)
    configs = {'cifar10': (os.path.join(ROOT, 'configs/ddpm_cifar10.yaml'), cifar_root),
               'mnist': (os.path.join(ROOT, 'configs/ddpm_mnist.yaml'), mnist_root)}
    peak = matmul_tflops(device) if 'matmul' in parts else None
    res['bf16_matmul_tflops'] = peak
    for name, (config, root) in configs.items():
        if name not in args.configs.split(','):
            continue
        gf = model_gflops_per_image(load_config(config), device)
        res.setdefault('gflops_per_image_forward', {})[name] = gf
        if 'train' in parts and args.warmup_run > 0:
            try:
                run_training(config, root, modes[0], args.warmup_run, args.print_freq,
                             os.path.join(tmp, f'{name}-warmup'))
            except RuntimeError as e:
                print('warm-up run failed:', e, flush=True)
        for mode in modes:
            if 'train' not in parts:
                break
            if f'{name}/{mode}' in args.skip.split(','):
                continue
            steps = args.mnist_steps if name == 'mnist' else args.train_steps
            try:
                windows, wall = run_training(config, root, mode, steps, args.print_freq,
                                             os.path.join(tmp, f'{name}-{mode}'))
            except RuntimeError as e:     # keep going: one broken variant must not cost the whole run
                print(e, flush=True)
                res['train'][f'{name}/{mode}'] = {'error': str(e)[-2000:]}
                continue
            r = summarize_training(windows)
            r['wall_s'] = wall
            r['loss_curve'] = [(w['step'], w['loss']) for w in windows]
            r['window_steps_per_s'] = [w['steps_per_s'] for w in windows]     # all windows, compile included
            r['overrides'] = MODES[mode]
            if peak:
                r['mfu'] = r['images_per_s'] * 3 * gf / 1e3 / peak
            res['train'][f'{name}/{mode}'] = r
            print(name, mode, r, flush=True)
    if 'sample' in parts:
        cfg = load_config(configs['cifar10'][0])
        gf = model_gflops_per_image(cfg, device)
        for mode in args.sample_modes.split(','):
            try:
                sec = time_sampling(cfg, mode, args.sample_batch, args.sample_steps, device)
            except Exception as e:
                print('sample', mode, 'failed:', repr(e)[-2000:], flush=True)
                continue
            r = {'batch': args.sample_batch, 'sec_per_step': sec,
                 'img_per_s_1000_steps': args.sample_batch / (sec * 1000),
                 'img_per_s_100_steps': args.sample_batch / (sec * 100),
                 'timed': f'{args.sample_steps} steps x 3, extrapolated'}
            if peak:
                r['mfu'] = args.sample_batch * gf / sec / 1e3 / peak
            res['sample'][f'cifar10/{mode}'] = r
            print('sample', mode, r, flush=True)
    if 'mnist/plain' in res['train'] and 'mnist/fast' in res['train'] and 'error' not in res['train']['mnist/fast']:
        res['loss_agreement'] = loss_agreement(res['train']['mnist/plain']['loss_curve'],
                                               res['train']['mnist/fast']['loss_curve'])
        print('loss agreement', res['loss_agreement'], flush=True)
        for key, r in res['train'].items():         # every other variant against plain, too
            if key.startswith('mnist/') and key not in ('mnist/plain', 'mnist/fast') and 'error' not in r:
                res.setdefault('loss_agreement_variants', {})[key] = loss_agreement(
                    res['train']['mnist/plain']['loss_curve'], r['loss_curve'])
        ck = os.path.join(tmp, 'mnist-plain', 'ckpt')
        if 'agree' in parts and os.path.isfile(os.path.join(ck, 'latest')):
            step_dir = os.path.join(ck, open(os.path.join(ck, 'latest')).read().strip())
            res['bf16_sampling_agreement'] = sampling_agreement(load_config(configs['mnist'][0]), step_dir, device)
            print('bf16 vs fp32 sampling', res['bf16_sampling_agreement'], flush=True)
    ratios = {}
    for kind in ('train', 'sample'):
        for key, r in res[kind].items():
            base = res[kind].get(key.split('/')[0] + '/plain')
            if base and 'error' not in base and 'error' not in r and not key.endswith('/plain'):
                k = 'steps_per_s' if kind == 'train' else 'img_per_s_1000_steps'
                ratios[f'{kind}:{key}'] = r[k] / base[k]
    res['fast_over_plain'] = ratios
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(res, f, indent=1)
    print_table(res)


def print_table(res):
    print(f"\n{res['card']}, torch {res['torch']}, bf16 matmul {res['bf16_matmul_tflops'] or 0:.0f} TFLOP/s")
    print(f"{'workload':32s} {'steps/s':>9s} {'img/s':>9s} {'MFU':>6s} {'mem GiB':>8s}")
    for k, r in res['train'].items():
        if 'error' in r:
            print(f"{'train ' + k:32s} failed")
            continue
        print(f"{'train ' + k:32s} {r['steps_per_s']:9.2f} {r['images_per_s']:9.0f} {r.get('mfu', 0):6.1%} {r['max_mem_gib']:8.2f}")
    for k, r in res['sample'].items():
        print(f"{'sample ' + k + ' (1000 st)':32s} {'':>9s} {r['img_per_s_1000_steps']:9.2f} {r.get('mfu', 0):6.1%}")
        print(f"{'sample ' + k + ' (100 st)':32s} {'':>9s} {r['img_per_s_100_steps']:9.2f}")
    for k, v in res['fast_over_plain'].items():
        print(f'fast / plain  {k}: {v:.2f}x')
    if 'loss_agreement' in res:
        a = res['loss_agreement']
        print(f"MNIST loss, last {a['windows']} windows: plain {a['plain_mean']:.5f}, fast {a['fast_mean']:.5f} "
              f"(diff {a['diff_in_std_errs']:+.1f} standard errors)")
    for k, a in res.get('loss_agreement_variants', {}).items():
        print(f"  {k}: {a['fast_mean']:.5f} (diff {a['diff_in_std_errs']:+.1f} standard errors)")
    if 'bf16_sampling_agreement' in res:
        a = res['bf16_sampling_agreement']
        print(f"bf16 vs fp32 sampling ({a['sampler']}, {a['n']} images): mean |diff| {a['mean_abs_diff_0_255']:.3f} "
              f"of 255, PSNR {a['psnr_db']:.1f} dB")


if __name__ == '__main__':
    main()
