"""Forward FLOPs per image of each config's UNet, by operator (CPU is enough).

    python bench/flops.py

`torch.utils.flop_counter` counts multiply-add as 2 FLOPs. On a CPU the attention (SDPA) is not counted:
its CPU kernel has no FLOP formula there, while on a GPU it has (bench.py's totals, e.g. 12.44 GFLOP for the
CIFAR-10 config, include it).
"""
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, load_config, model_gflops_per_image  # noqa: E402


def main():
    for path in sorted(glob.glob(os.path.join(ROOT, 'configs', 'ddpm_*.yaml'))):
        ops = model_gflops_per_image(load_config(path), 'cpu', by_op=True)
        parts = ', '.join(f'{op} {g:.3f}' for op, g in sorted(ops.items(), key=lambda kv: -kv[1]))
        print(f'{os.path.basename(path):24s} {sum(ops.values()):8.3f} GFLOP per image: {parts}')


if __name__ == '__main__':
    main()
