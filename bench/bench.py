"""GPU benchmark: training and sampling speed of this repo, plain vs fast mode, in one run.

    python bench/bench.py --out bench/results.json [--train-steps 600] [--loss-steps 2000]

Training is timed through the real `train_ddpm.py` command (a subprocess per workload): its log reports
steps/s over each `print_freq` window, timed on the host after the window's one device sync; the first
two windows (compile, warm-up) are dropped and the median of the rest is reported. Data: synthetic images
written in the real on-disk formats (CIFAR-10 python pickles, MNIST IDX), read by the real dataset code,
either kept on the GPU (`data.on_gpu true`) or fed by DataLoader workers.

Sampling is timed in-process on a slice of the chain (`--sample-steps` reverse steps after warm-up, with
CUDA-event timing) and extrapolated to the 1000-step chain and to a 100-step skip chain (same cost per step).

plain = eager fp32, NCHW, DataLoader workers (the repo's own baseline).
fast  = the recommended setting: data on the GPU, bf16 autocast, the model run on a bf16 copy of its conv/linear
        weights (train.bf16_weights), the parameters in one flat buffer (train.flat_params: clipping, Adam, the EMA and
        the bf16 refresh over one tensor each), torch.compile with CUDA graphs
        (mode reduce-overhead), convolutions channels_last inside the compiled graph (inductor's layout
        optimization, forced on for training: train.compile_force_layout_opt), NCHW model and data (channels_last
        there measured no faster, see NOTES.md), GroupNorm statistics per channel when sampling (GroupNorm's
        compiled_stats 'auto'); sampling also folds the weights into the graph (inductor's freezing) and tunes
        inductor's kernels (coordinate-descent tuning), as sample_ddpm.py --compile reduce-overhead --compile_tuning
        does. A discarded warm-up run precedes each config's timed runs (--warmup-run). Variants each change one
        or two switches, to measure what they are worth: training fast-nolayout (inductor's heuristic decides the
        layout), fast-convcl (conv weights stored channels_last), fast-gnchan / fast-gnchunk (per-channel /
        per-chunk statistics in training too), fast-oldmodel (attempt 7's attention and upsampling forwards),
        fast-combo (inductor's combo kernels), fast-nobf16w (autocast on the fp32 weights), fast-perblock (one GEMM
        per ResBlock embedding projection), fast-a10 (attempt 10's fast: both), fast-bf16nchw (the bf16 copy keeps
        NCHW conv weights), fast-cl, fast-nographs, fast-cudnn, fast-cl-cudnn, fast-cdt (train.compile_tuning:
        inductor's coordinate-descent tuning), fast-noclbw / fast-noclbw-cdt (without
        models/conv_backward_layout.py: cuDNN copies the backward's NCHW and strided operands), fast-noflat
        (per-parameter optimizer, clipping, EMA and refresh), eager-bf16; sampling
        fast-notune (without the tuning), fast-nofreeze, fast-gngroup, fast-gnchunk, fast-oldmodel, fast-perblock,
        fast-cl, fast-cudnn, fast-cl-cudnn, fast-autotune.
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

from diffusions import DDPM  # noqa: E402
from models import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402

FAST = {'data.on_gpu': 'true', 'train.mixed_precision': 'bf16', 'train.compile': 'true',
        'train.compile_mode': 'reduce-overhead', 'train.channels_last': 'false',
        'train.compile_force_layout_opt': 'true', 'train.bf16_weights': 'true', 'train.flat_params': 'true'}
MODES = {
    'plain': {'data.on_gpu': 'false', 'train.mixed_precision': 'no', 'train.compile': 'false',
              'train.channels_last': 'false'},
    'fast': FAST,                                                   # the recommended setting
    'fast-cl': dict(FAST, **{'train.channels_last': 'true'}),      # variants, to measure each switch
    'fast-nographs': dict(FAST, **{'train.compile_mode': 'default'}),
    'fast-cudnn': dict(FAST, **{'train.cudnn_benchmark': 'true'}),
    'fast-cl-cudnn': dict(FAST, **{'train.channels_last': 'true', 'train.cudnn_benchmark': 'true'}),
    'eager-bf16': dict(FAST, **{'train.compile': 'false'}),
    'fast-cdt': dict(FAST, **{'train.compile_tuning': 'true'}),     # + inductor's coordinate-descent tuning
    'fast-noflat': dict(FAST, **{'train.flat_params': 'false'}),   # per-parameter clip/Adam/EMA/refresh (attempt 14's fast)
    'fast-noclbw': FAST,        # without models/conv_backward_layout.py (attempt 13's fast) (MODE_VARIANT)
    'fast-noclbw-cdt': dict(FAST, **{'train.compile_tuning': 'true'}),   # the same, with the tuning (MODE_VARIANT)
    'fast-nolayout': dict(FAST, **{'train.compile_force_layout_opt': 'false'}),   # inductor's heuristic: NCHW graph
    'fast-gnchan': FAST,        # GroupNorm statistics per channel in the compiled training graph too (MODE_VARIANT)
    'fast-gnchunk': FAST,       # GroupNorm statistics per row chunk in the compiled training graph (MODE_VARIANT)
    'fast-oldmodel': FAST,      # attempt 7's AttnBlock and Upsample forwards (MODE_VARIANT), to measure the new ones
    'fast-combo': FAST,         # inductor's combo kernels: independent small kernels (casts) launched as one
    'fast-convcl': FAST,        # conv weights stored channels_last, as the compiled graph uses them (no grad copies)
    'fast-nobf16w': dict(FAST, **{'train.bf16_weights': 'false'}),    # autocast casts the fp32 weights in the graph
    'fast-perblock': FAST,      # one linear layer per ResBlock for the embedding projections (MODE_VARIANT)
    'fast-a10': dict(FAST, **{'train.bf16_weights': 'false'}),        # attempt 10's fast: both of the above
    'fast-bf16nchw': FAST,      # the bf16 copy with the conv weights' NCHW layout kept (MODE_VARIANT)
}
# what apply_variant changes in the training process before train_ddpm.py runs (through the VARIANT launcher)
MODE_VARIANT = {'fast-gnchan': {'norm_stats': 'per_channel'}, 'fast-gnchunk': {'norm_stats': 'per_chunk'},
                'fast-oldmodel': {'old_model': True}, 'fast-combo': {'inductor': {'combo_kernels': True}},
                'fast-convcl': {'conv_weights_cl': True}, 'fast-perblock': {'per_block_emb': True},
                'fast-a10': {'per_block_emb': True}, 'fast-bf16nchw': {'bf16_weights_nchw': True},
                'fast-noclbw': {'no_cl_conv_backward': True}, 'fast-noclbw-cdt': {'no_cl_conv_backward': True}}
VARIANT = ('import json, runpy, sys; sys.path.insert(0, "bench"); import bench; '
           'bench.apply_variant(json.loads(sys.argv.pop(1))); sys.argv.pop(0); '
           'runpy.run_path(sys.argv[0], run_name="__main__")')


def _old_attn_forward(self, x):
    """AttnBlock.forward before attempt 8: the tokens stay a transposed view (bias add outside the GEMM)."""
    import torch.nn.functional as F
    B, C, H, W = x.shape
    h = self.norm(x).reshape(B, C, H * W).transpose(1, 2)
    q, k, v = self.qkv(h)[:, None].chunk(3, dim=-1)
    h = self.proj_out(F.scaled_dot_product_attention(q, k, v)[:, 0])
    return x + h.transpose(1, 2).reshape(B, C, H, W)


def _old_upsample_forward(self, x):
    """Upsample.forward before attempt 8: F.interpolate, whose backward is an index_put with accumulation."""
    import torch.nn.functional as F
    return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


def _per_block_projections(self, emb):
    """UNet.project_embedding before attempt 11: each ResBlock's own linear layer, one GEMM each."""
    return [block.emb_proj(emb) for block in self.res_blocks]


def apply_variant(spec):
    """Apply a bench variant to this process (see MODE_VARIANT); return a function that undoes it."""
    import torch._inductor.config as inductor_config
    import models
    import models.unet as unet
    undo = []
    if 'norm_stats' in spec:
        undo.append((unet.GroupNorm, 'compiled_stats', unet.GroupNorm.compiled_stats))
        unet.GroupNorm.compiled_stats = spec['norm_stats']
    for k, v in spec.get('inductor', {}).items():
        undo.append((inductor_config, k, getattr(inductor_config, k)))
        setattr(inductor_config, k, v)
    if spec.get('old_model'):
        undo += [(unet.AttnBlock, 'forward', unet.AttnBlock.forward), (unet.Upsample, 'forward', unet.Upsample.forward)]
        unet.AttnBlock.forward, unet.Upsample.forward = _old_attn_forward, _old_upsample_forward
    if spec.get('per_block_emb'):
        undo.append((unet.UNet, 'project_embedding', unet.UNet.project_embedding))
        unet.UNet.project_embedding = _per_block_projections
    if spec.get('bf16_weights_nchw'):
        import functools
        undo.append((models, 'BF16Weights', models.BF16Weights))
        models.BF16Weights = functools.partial(models.BF16Weights, channels_last=False)
    if spec.get('conv_weights_cl'):
        from models.bf16_weights import conv_weights_channels_last_
        build = models.build_model

        def build_cl(cfg):
            return conv_weights_channels_last_(build(cfg))
        undo.append((models, 'build_model', build))
        models.build_model = build_cl

    if spec.get('no_cl_conv_backward'):
        import models.conv_backward_layout as conv_backward_layout
        undo.append((conv_backward_layout, 'install', conv_backward_layout.install))
        conv_backward_layout.install = lambda: None

    def restore():
        for obj, name, value in reversed(undo):
            setattr(obj, name, value)
    return restore


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
    if mode in MODE_VARIANT:        # python -c VARIANT JSON train_ddpm.py ...
        launcher = (*launcher, '-c', VARIANT, json.dumps(MODE_VARIANT[mode]))
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


SAMPLE_MODES = {   # precision, torch.compile mode (None: eager), memory format, cudnn.benchmark, inductor options,
                   # GroupNorm.compiled_stats
    'plain': ('fp32', None, torch.contiguous_format, False, {}, 'auto'),
    # fast: as sample_ddpm.py --compile reduce-overhead --compile_tuning (freezing, coordinate-descent tuning);
    # 'auto' statistics are per channel in this no-grad graph
    'fast': ('bf16', 'reduce-overhead', torch.contiguous_format, False,
             {'freezing': True, 'coordinate_descent_tuning': True}, 'auto'),
    'fast-notune': ('bf16', 'reduce-overhead', torch.contiguous_format, False, {'freezing': True}, 'auto'),
    'fast-nofreeze': ('bf16', 'reduce-overhead', torch.contiguous_format, False, {}, 'auto'),
    'fast-gngroup': ('bf16', 'reduce-overhead', torch.contiguous_format, False, {'freezing': True}, 'per_group'),
    'fast-gnchunk': ('bf16', 'reduce-overhead', torch.contiguous_format, False, {'freezing': True}, 'per_chunk'),
    'fast-oldmodel': ('bf16', 'reduce-overhead', torch.contiguous_format, False, {'freezing': True}, 'auto'),
    'fast-perblock': ('bf16', 'reduce-overhead', torch.contiguous_format, False, {'freezing': True}, 'auto'),
    'fast-cl': ('bf16', 'reduce-overhead', torch.channels_last, False, {}, 'auto'),
    'fast-cudnn': ('bf16', 'reduce-overhead', torch.contiguous_format, True, {}, 'auto'),
    'fast-cl-cudnn': ('bf16', 'reduce-overhead', torch.channels_last, True, {}, 'auto'),
    'fast-autotune': ('bf16', 'max-autotune', torch.contiguous_format, False, {}, 'auto'),   # Triton templates too
}


SAMPLE_VARIANT = {'fast-oldmodel': {'old_model': True}, 'fast-perblock': {'per_block_emb': True}}


@torch.no_grad()
def time_sampling(cfg, mode, batch, steps, device):
    """Seconds per reverse step of the full-T chain at `batch` images (median over 3 repeats)."""
    import torch._inductor.config
    precision, compile_mode, fmt, cudnn_bench, inductor, norm_stats = SAMPLE_MODES[mode]
    torch._dynamo.reset()                              # each mode compiles afresh
    torch.backends.cudnn.benchmark = cudnn_bench
    restore = apply_variant({'norm_stats': norm_stats, **SAMPLE_VARIANT.get(mode, {})})
    try:
        model = build_model(cfg['model']).to(device).eval().to(memory_format=fmt)
        diffusion = DDPM.from_config(cfg['diffusion'])
        shape = (batch, cfg['data']['img_channels'], cfg['data']['img_size'], cfg['data']['img_size'])
        net = torch.compile(model, mode=compile_mode) if compile_mode else model
        x = torch.randn(shape, device=device).contiguous(memory_format=fmt)
        g = torch.Generator(device).manual_seed(0)
        ctx = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16')

        def run(n, x):
            for i in range(diffusion.num_steps - 1, diffusion.num_steps - 1 - n, -1):
                with ctx():
                    x, _ = diffusion.p_sample(net, x, i, g)
            return x
        times = []
        with torch._inductor.config.patch(**inductor):     # in force whenever it compiles
            run(3, x)                                      # compile / warm-up
            for _ in range(3):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run(steps, x)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000 / steps)
    finally:
        torch.backends.cudnn.benchmark = False
        restore()
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
    sampler = make_sampler('ddim', DDPM.from_config(cfg['diffusion'], skip_type='uniform', skip_steps=steps))
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
    p.add_argument('--only', default='', help='comma list of parts: matmul,train,real,sample')
    p.add_argument('--modes', default='plain,fast', help=f'training modes, of {list(MODES)}')
    p.add_argument('--sample-modes', default='plain,fast', help=f'sampling modes, of {list(SAMPLE_MODES)}')
    p.add_argument('--configs', default='cifar10,mnist')
    p.add_argument('--skip', default='', help='comma list of config/mode training runs to leave out, e.g. cifar10/plain')
    p.add_argument('--mnist-root', default=None,
                   help='real MNIST-format IDX files for the MNIST config (e.g. Fashion-MNIST); default: synthetic')
    p.add_argument('--mnist-steps', type=int, default=2000, help='MNIST runs double as the loss-curve check')
    p.add_argument('--warmup-run', type=int, default=200,
                   help="steps of a discarded run of each config's first mode before the timed ones (0: none): the "
                        "first training run of a bench call read 4-12%% low in 4 of 6 calls (NOTES.md, attempt 12)")
    args = p.parse_args()
    assert torch.cuda.is_available(), 'the benchmark needs a CUDA GPU'
    device = torch.device('cuda')
    parts = set(args.only.split(',')) if args.only else {'matmul', 'train', 'real', 'sample', 'agree'}
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
            r['data'] = 'gpu' if MODES[mode]['data.on_gpu'] == 'true' else 'dataloader'
            r['overrides'] = MODES[mode]
            if peak:
                r['mfu'] = r['images_per_s'] * 3 * gf / 1e3 / peak
            res['train'][f'{name}/{mode}'] = r
            print(name, mode, r, flush=True)
        if 'real' in parts and name == 'cifar10':   # fast mode fed through DataLoader workers instead
            over = ['--data.on_gpu', 'false']
            windows, wall = run_training(config, root, 'fast', args.train_steps, args.print_freq,
                                         os.path.join(tmp, f'{name}-fast-dataloader'), over)
            r = dict(summarize_training(windows), wall_s=wall, data='dataloader')
            res['train'][f'{name}/fast-dataloader'] = r
            print(name, 'fast-dataloader', r, flush=True)
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
