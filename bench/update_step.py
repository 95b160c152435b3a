"""What the weight update after each backward costs: eager (as train_ddpm.py runs it) against compiled variants.

    python bench/update_step.py [--config configs/ddpm_mnist.yaml] [--iters 200]

The update is everything between the backward and the next forward: the bf16 copy's gradients to the fp32
master (models.BF16Weights.grads_to_master), gradient-norm clipping, Adam, the bf16 copy refreshed, the EMA.
Variants, each timed with CUDA events over `--iters` updates after warm-up (median of 5 windows):
  eager      : as train_ddpm.py: foreach clip, fused Adam, foreach copies and lerp (one launch per op and group)
  compiled   : clip, Adam (foreach, the learning rate a tensor), the refresh and the EMA (its weight a tensor) in one
               torch.compile'd function, CUDA-graphed (mode reduce-overhead); grads_to_master stays eager
  compiled-nograph : the same, without CUDA graphs
Random gradients stand in for a backward. Prints ms per update and the relative difference of the weights after
the timed updates against eager (the variants must compute the same update).
"""
import argparse
import os
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from models import EMA, BF16Weights, build_model  # noqa: E402
from utils.config import load_config  # noqa: E402


def setup(cfg, device, compiled):
    torch.manual_seed(0)
    net = build_model(cfg['model']).to(device)
    weights = BF16Weights(net)
    ema = EMA(net, 0.9999, True)
    lr = torch.tensor(2e-4, device=device) if compiled else 2e-4
    opt = torch.optim.Adam(net.parameters(), lr=lr, fused=None if compiled else device.type == 'cuda',
                           foreach=True if compiled else None, capturable=compiled)
    params = list(net.parameters())
    gen = torch.Generator(device).manual_seed(1)
    fake_grads = [torch.randn(c.shape, device=device, generator=gen).to(c.dtype).contiguous(
        memory_format=torch.channels_last if c.dim() == 4 else torch.contiguous_format)
        for c in weights.copies]
    shared = [p for p in params if all(p is not m for m in weights.master)]
    shared_grads = [torch.randn_like(p) for p in shared]
    return net, weights, ema, opt, params, fake_grads, shared, shared_grads


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=os.path.join(ROOT, 'configs/ddpm_mnist.yaml'))
    p.add_argument('--iters', type=int, default=200)
    p.add_argument('--variants', default='eager,compiled,compiled-nograph')
    args = p.parse_args()
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    cfg = load_config(args.config)
    results, finals = {}, {}
    for variant in args.variants.split(','):
        compiled = variant.startswith('compiled')
        net, weights, ema, opt, params, fake_grads, shared, shared_grads = setup(cfg, device, compiled)

        def fake_backward():
            for c, g in zip(weights.copies, fake_grads):
                c.grad = g
            for s, g in zip(shared, shared_grads):
                s.grad = g

        if not compiled:
            def update():
                weights.grads_to_master()
                torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
                opt.step()
                opt.zero_grad(set_to_none=True)
                weights.refresh()
                ema.update(net)
        else:
            ema_params = ema.ema_params
            ema_w = torch.zeros((), device=device)

            @torch.no_grad()
            def fused():
                torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
                opt.step()
                torch._foreach_copy_(weights.copies, weights.master)
                d = torch._foreach_sub(params, ema_params)
                torch._foreach_mul_(d, ema_w)
                torch._foreach_add_(ema_params, d)
            fused_c = torch.compile(fused, mode='reduce-overhead' if variant == 'compiled' else 'default')

            def update():
                weights.grads_to_master()
                ema_w.fill_(1.0 - ema.current_decay())
                ema.num_updates += 1
                fused_c()
                opt.zero_grad(set_to_none=True)

        for _ in range(20):
            fake_backward()
            update()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times = []
        for _ in range(5):
            if device.type == 'cuda':
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
            for _ in range(args.iters):
                fake_backward()
                update()
            if device.type == 'cuda':
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b) / args.iters)
        results[variant] = statistics.median(times) if times else float('nan')
        finals[variant] = (torch.cat([p.detach().flatten() for p in params]),
                           torch.cat([e.detach().flatten() for e in ema.ema_params]))
    ref = finals.get('eager')
    for v, ms in results.items():
        diff = ''
        if ref is not None:
            dw = ((finals[v][0] - ref[0]).norm() / ref[0].norm()).item()
            de = ((finals[v][1] - ref[1]).norm() / ref[1].norm()).item()
            diff = f'  weights rel. diff vs eager {dw:.2e}, EMA {de:.2e}'
        print(f'{v:18s} {ms:7.3f} ms per update{diff}')


if __name__ == '__main__':
    main()
