"""The layouts a compiled training step hands its convolution backwards, and the copies cuDNN makes of them.

    python bench/conv_layouts.py [--config configs/ddpm_mnist.yaml] [--autocast] [--batch 128] [--no-cl-backward]

Compiles the fast training step (`train.compile_force_layout_opt`, bf16, the model on its bf16 weight copy unless
--autocast; torch.compile's default mode, so every call goes through the dispatcher) and runs one step under a
dispatch mode that records each `aten.convolution_backward` call of the compiled backward: the layouts of
grad_output, input and weight. (The mode is entered around the backward only: a forward run under a dispatch mode
is not the compiled one, and an earlier version of this script, which did that, counted eager autograd's calls.)
cuDNN runs a convolution channels_last when its input or weight is, and copies every operand that is not
(`.contiguous(memory_format)` inside convolution_backward): the `copies` column counts those activation/weight
copies.
On a GPU this is the real thing; on the CPU the traced layouts follow the CPU's own convolution rules, so only
the GPU's numbers mean anything for cuDNN.
"""
import argparse
import collections
import contextlib
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusions import DDPM  # noqa: E402
from models import BF16Weights, build_model, compile_model  # noqa: E402
from utils.config import load_config  # noqa: E402


def layout(t) -> str:
    """'cl' (channels_last, not also contiguous), 'nchw' (contiguous, not also channels_last), 'both' (either: size-1
    dimensions) or 'strided' (neither, e.g. a channel slice)."""
    cl, c = t.is_contiguous(memory_format=torch.channels_last), t.is_contiguous()
    return 'both' if cl and c else 'cl' if cl else 'nchw' if c else 'strided'


class ConvBackwardLog(TorchDispatchMode):
    """Records (grad_output, input, weight) layouts and shapes of every convolution_backward call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.calls.append([(layout(a), tuple(a.shape)) for a in args[:3]])
        return func(*args, **(kwargs or {}))


def cudnn_copies(call) -> int:
    """Operands convolution_backward copies on CUDA: channels_last if the input or the weight is, then every operand
    not contiguous in that format is copied (ATen's cudnn_conv_suggest_memory_format)."""
    (_, _), (li, _), (lw, _) = call[0], call[1], call[2]
    fmt = 'cl' if 'cl' in (li, lw) else 'nchw'
    return sum(lay not in (fmt, 'both') for lay, _ in call)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=os.path.join(ROOT, 'configs/ddpm_mnist.yaml'))
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--autocast', action='store_true', help='autocast on the fp32 weights instead of the bf16 copy')
    p.add_argument('--verbose', action='store_true', help='print every call')
    p.add_argument('--no-cl-backward', action='store_true',
                   help='without models/conv_backward_layout.py (before attempt 14: cuDNN copies the operands)')
    args = p.parse_args()
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    cfg = load_config(args.config)
    dc = cfg['data']
    torch.manual_seed(0)
    diffusion = DDPM.from_config(cfg['diffusion'])
    model = build_model(cfg['model']).to(device)
    net = model if args.autocast else BF16Weights(model).model
    if args.no_cl_backward:
        import models.conv_backward_layout
        models.conv_backward_layout.install = lambda: None
    net = compile_model(net, 'default', force_layout_opt=True)
    shape = (args.batch, dc['img_channels'], dc['img_size'], dc['img_size'])

    def step(mode=contextlib.nullcontext()):
        x = torch.rand(shape, device=device) * 2 - 1
        t = torch.randint(0, diffusion.num_steps, (args.batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = diffusion.training_loss(net, x, t, torch.randn_like(x))
        with mode:              # only around the backward: a forward under a dispatch mode would run uncompiled
            loss.backward()

    step()                      # compile
    log = ConvBackwardLog()
    step(log)
    kinds = collections.Counter(tuple(lay for lay, _ in c) for c in log.calls)
    copies = sum(cudnn_copies(c) for c in log.calls)
    if args.verbose:
        for c in log.calls:
            print(cudnn_copies(c), c)
    print(f'{device.type}, torch {torch.__version__}, {os.path.basename(args.config)}, batch {args.batch}, '
          f'{"autocast" if args.autocast else "bf16 weights"}: '
          f'{len(log.calls)} convolution_backward calls, {copies} operand copies by cuDNN')
    for k, n in kinds.most_common():
        print(f'  {n:3d} x (grad_output, input, weight) = {k}')


if __name__ == '__main__':
    main()
