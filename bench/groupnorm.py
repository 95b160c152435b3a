"""GroupNorm + SiLU alone, compiled, at the shapes of the CIFAR-10 UNet: how close to memory bandwidth?

    python bench/groupnorm.py [--config configs/ddpm_cifar10.yaml] [--out groupnorm.json]

For every distinct (channels, resolution) of the UNet's GroupNorms, times y = silu(groupnorm(x)) in bf16
(statistics in float32) compiled (without CUDA graphs: a graph copies each call's input into its own buffer,
which would add a copy to every timing; attempt 6 timed the sampling setting that way), in two settings:
  sample: forward only, batch 500 (one reverse step of the sampling chain)
  train:  forward + backward, batch 128
and three formulations: `per_group` (F.group_norm, what nn.GroupNorm traces to), `per_channel`
(models.unet.group_norm_from_channel_stats), `per_chunk` (group_norm_from_chunk_stats), each on an NCHW and on a
channels_last x. The bandwidth column counts the least traffic each must move (forward: read x, write y; forward + backward: also read x and
dy, write dx) over the time, next to a plain copy's rate on the same tensor. Times: CUDA events over 50
calls after warm-up, median of 3. Only the `--top` shapes with the most elements (count x size) are timed
(the default 6 hold 91% of the CIFAR-10 UNet's GroupNorm input); totals weight each by how many norms have it.
"""
import argparse
import collections
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from models import build_model  # noqa: E402
from models.unet import group_norm_from_channel_stats, group_norm_from_chunk_stats  # noqa: E402
from utils.config import load_config  # noqa: E402


def norm_shapes(cfg):
    """{(C, H, W): count} of the GroupNorm inputs of the config's UNet (one forward at batch 1, CPU)."""
    model = build_model(cfg['model'])
    shapes = collections.Counter()
    for m in model.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.register_forward_hook(lambda mod, inp, out: shapes.update([tuple(inp[0].shape[1:])]))
    s = cfg['data']['img_size']
    with torch.no_grad():
        model(torch.randn(1, cfg['data']['img_channels'], s, s), torch.tensor([1]))
    return shapes


def timed(fn, calls=50, repeats=3):
    """Seconds per call of fn (already warm), median of `repeats` CUDA-event timings of `calls` calls."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000 / calls)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=os.path.join(ROOT, 'configs/ddpm_cifar10.yaml'))
    p.add_argument('--groups', type=int, default=None, help='default: the config model.params.groups')
    p.add_argument('--settings', default='sample,train', help='comma list of: sample, train')
    p.add_argument('--top', type=int, default=6, help='time the N shapes with the most elements')
    p.add_argument('--out', default=None)
    args = p.parse_args()
    assert torch.cuda.is_available(), 'this benchmark needs a CUDA GPU'
    cfg = load_config(args.config)
    G = args.groups or cfg['model']['params']['groups']
    all_shapes = norm_shapes(cfg)
    size = lambda item: item[1] * item[0][0] * item[0][1] * item[0][2]
    shapes = dict(sorted(all_shapes.items(), key=size, reverse=True)[:args.top])
    share = sum(map(size, shapes.items())) / sum(map(size, all_shapes.items()))
    print(f'{len(shapes)} of {len(all_shapes)} shapes, {share:.0%} of the GroupNorm input elements')
    dev = torch.device('cuda')
    impls = {'per_group': lambda x, w, b: F.group_norm(x.float(), G, w, b, 1e-6),
             'per_channel': lambda x, w, b: group_norm_from_channel_stats(x, G, w, b, 1e-6),
             'per_chunk': lambda x, w, b: group_norm_from_chunk_stats(x, G, w, b, 1e-6)}
    formats = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}
    rows, totals = [], collections.Counter()
    for setting, batch in (('sample', 500), ('train', 128)):
        if setting not in args.settings.split(','):
            continue
        for (C, H, W), count in sorted(shapes.items()):
            x0 = torch.randn(batch, C, H, W, device=dev).to(torch.bfloat16)
            nbytes = x0.numel() * 2
            copy = torch.compile(lambda x: x * 2)
            for _ in range(3):
                copy(x0)
            t_copy = timed(lambda: copy(x0))
            w = torch.rand(C, device=dev) + 0.5
            b = torch.rand(C, device=dev) - 0.5
            for impl, f in impls.items():
                for fmt_name, fmt in formats.items():
                    torch._dynamo.reset()
                    x = x0.contiguous(memory_format=fmt)
                    fn = torch.compile(lambda x: F.silu(f(x, w, b)).to(torch.bfloat16))
                    if setting == 'sample':
                        def step():
                            with torch.no_grad():
                                return fn(x)
                        traffic = 2 * nbytes
                    else:
                        xg = x.detach().requires_grad_(True)
                        dy = torch.randn_like(x0).contiguous(memory_format=fmt)

                        def step():
                            fn(xg).backward(dy)
                        traffic = 5 * nbytes
                    for _ in range(3):
                        step()
                    torch.cuda.synchronize()
                    t = timed(step)
                    r = {'setting': setting, 'batch': batch, 'C': C, 'H': H, 'count': count, 'impl': impl,
                         'layout': fmt_name, 'us': t * 1e6, 'gb_per_s': traffic / t / 1e9,
                         'copy_gb_per_s': 2 * nbytes / t_copy / 1e9}
                    rows.append(r)
                    totals[(setting, impl, fmt_name)] += t * count * 1e3
                    print(f"{setting:6s} b{batch:<4d} C{C:<4d} {H:2d}x{W:<2d} x{count:<2d} {impl:11s} {fmt_name:13s} "
                          f"{t * 1e6:8.1f} us  {r['gb_per_s']:7.0f} GB/s  (copy {r['copy_gb_per_s']:5.0f} GB/s)",
                          flush=True)
    print(f'\nthe timed shapes, weighted by how many norms have them ({share:.0%} of the elements), ms:')
    for (setting, impl, fmt_name), ms in sorted(totals.items()):
        print(f'  {setting:6s} {impl:11s} {fmt_name:13s} {ms:7.2f}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump({'card': torch.cuda.get_device_name(0), 'torch': torch.__version__, 'rows': rows,
                       'share_of_elements': share, 'totals_ms': {'/'.join(k): v for k, v in totals.items()}},
                      f, indent=1)


if __name__ == '__main__':
    main()
