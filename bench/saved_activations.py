"""What a compiled bf16 training step keeps for its backward, per image, for every config (runs on a CPU).

    python bench/saved_activations.py [--configs ddpm_cifar10,ddpm_mnist]

Traces the UNet's forward + backward (MSE loss, as in training) through AOTAutograd with inductor's
decompositions and the min-cut partitioner that torch.compile uses, under bf16 autocast, and sums the 4-D
tensors the forward graph hands to the backward graph, by dtype. The CPU's autocast keeps group_norm in bf16
while CUDA's runs it in float32, so group_norm is made to follow CUDA's rule here. Written each step in the
forward and read back in the backward, these bytes are a floor on the step's memory traffic beyond the passes
each operation makes anyway.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from models import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402


def saved_per_image(cfg, batch=5):
    """{dtype name: (bytes per image, tensor count)} of the 4-D activations saved for the backward (first dim the
    batch, which is 5 so that no weight, e.g. a bf16 copy of a convolution's, has it too)."""
    from torch._functorch.aot_autograd import aot_function
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table
    from torch.func import functional_call
    model = build_model(cfg['model']).train()
    names = [n for n, _ in model.named_parameters()]
    saved = {}

    def fw_compiler(gm, example_inputs):
        out = next(n for n in gm.graph.nodes if n.op == 'output').args[0]
        for node in out[1:]:                       # out[0] is the loss; the rest go to the backward
            v = node.meta.get('val') if hasattr(node, 'meta') else None
            if isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[0] == batch:
                b, n = saved.get(str(v.dtype), (0, 0))
                saved[str(v.dtype)] = (b + v.numel() * v.element_size() / batch, n + 1)
        return gm.forward

    def loss(*args):
        params, (x, t, noise) = dict(zip(names, args[:-3])), args[-3:]
        return F.mse_loss(functional_call(model, params, (x, t)).float(), noise)

    step = aot_function(loss, fw_compiler=fw_compiler, bw_compiler=lambda gm, ex: gm.forward,
                        partition_fn=min_cut_rematerialization_partition, decompositions=select_decomp_table())
    s, c = cfg['data']['img_size'], cfg['data']['img_channels']
    x, noise = torch.randn(batch, c, s, s), torch.randn(batch, c, s, s)
    group_norm = F.group_norm

    def group_norm_fp32(x, num_groups, weight=None, bias=None, eps=1e-5):     # CUDA autocast's rule
        f = lambda p: p.float() if p is not None else None
        return group_norm(x.float(), num_groups, f(weight), f(bias), eps)
    F.group_norm = group_norm_fp32
    try:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            step(*model.parameters(), x, torch.randint(0, 1000, (batch,)), noise)
    finally:
        F.group_norm = group_norm
    return saved


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--configs', default='ddpm_cifar10,ddpm_mnist', help='config names in configs/')
    p.add_argument('--batch', type=int, default=128, help='training batch the per-step total is given for')
    args = p.parse_args()
    for name in args.configs.split(','):
        saved = saved_per_image(load_config(os.path.join(ROOT, 'configs', name + '.yaml')))
        total = sum(b for b, _ in saved.values())
        parts = ', '.join(f'{dt.replace("torch.", "")} {b / 1e6:.2f} MB ({n} tensors)' for dt, (b, n) in saved.items())
        print(f'{name}: {total / 1e6:.2f} MB per image saved for the backward ({parts}); '
              f'{total * args.batch / 1e9:.2f} GB per step at batch {args.batch}')


if __name__ == '__main__':
    main()
