"""What the weight update after each backward costs: utils.weight_update.WeightUpdate eager against compiled.

    python bench/update_step.py [--config configs/ddpm_mnist.yaml] [--iters 200]

The update is everything between the backward and the next forward: the bf16 copy's gradients to the fp32 master,
gradient-norm clipping, Adam, the bf16 copy refreshed, the EMA (train.compile_update null / default /
reduce-overhead, as train_ddpm.py builds it). Random gradients stand in for a backward. Each variant is timed with
CUDA events over `--iters` updates after warm-up (median of 5 windows); prints ms per update and the relative
difference of the weights and the EMA after all updates against eager (the variants compute the same update).
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
from utils.weight_update import WeightUpdate, make_adam  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=os.path.join(ROOT, 'configs/ddpm_mnist.yaml'))
    p.add_argument('--iters', type=int, default=200)
    p.add_argument('--variants', default='eager,default,reduce-overhead', help='compile modes; eager: none')
    args = p.parse_args()
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    cfg = load_config(args.config)
    results, finals = {}, {}
    for variant in args.variants.split(','):
        mode = None if variant == 'eager' else variant
        torch.manual_seed(0)
        net = build_model(cfg['model']).to(device)
        weights = BF16Weights(net)
        ema = EMA(net, 0.9999, True)
        opt = make_adam(net.parameters(), 2e-4, (0.9, 0.999), 0.0, device, compiled=mode is not None)
        update = WeightUpdate(net, opt, ema, 1.0, weights, compile_mode=mode)
        gen = torch.Generator(device).manual_seed(1)
        copied = {id(c) for c in weights.copies}
        trainable = weights.copies + [q for q in weights.model.parameters() if id(q) not in copied]
        grads = [torch.randn(q.shape, device=device, generator=gen).to(q.dtype).contiguous(
            memory_format=torch.channels_last if q.dim() == 4 else torch.contiguous_format) for q in trainable]

        def step():
            for q, g in zip(trainable, grads):     # as a backward leaves them: on the copy, and the shared ones
                q.grad = g.clone()
            update()

        for _ in range(20):
            step()
        sync()
        times = []
        for _ in range(5 if device.type == 'cuda' else 1):
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2)) if device.type == 'cuda' else (None, None)
            if start:
                start.record()
            for _ in range(args.iters):
                step()
            if end:
                end.record()
                sync()
                times.append(start.elapsed_time(end) / args.iters)
        results[variant] = statistics.median(times) if times else float('nan')
        finals[variant] = (torch.cat([q.detach().flatten() for q in net.parameters()]),
                           torch.cat([e.detach().flatten() for e in ema.ema_params]))
    ref = finals.get('eager')
    print(f'{device.type}, torch {torch.__version__}, {os.path.basename(args.config)}: ms per update '
          f'(includes cloning the fake gradients, the same in every variant)')
    for v, ms in results.items():
        diff = ''
        if ref is not None:
            dw = ((finals[v][0] - ref[0]).norm() / ref[0].norm()).item()
            de = ((finals[v][1] - ref[1]).norm() / ref[1].norm()).item()
            diff = f'  weights rel. diff vs eager {dw:.1e}, EMA {de:.1e}'
        print(f'  {v:16s} {ms:7.3f}{diff}')


if __name__ == '__main__':
    main()
