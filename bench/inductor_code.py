"""Inductor's generated CUDA (Triton) code for the UNet, written on a machine without a GPU.

    python bench/inductor_code.py [--config configs/ddpm_cifar10.yaml] [--what sample|train] [--bf16-weights]
                                  [--batch N] [--out F] [--no-cl-backward]

What it does: traces the UNet's no-grad forward (`sample`, the sampling network call, batch 500 by default) or a
training step's forward and backward (`train`, batch 128, an MSE loss on the network output) with torch.compile on the
meta device, relabels the captured graphs to fake CUDA tensors, stubs the few CUDA queries inductor makes (an
H100's properties: 132 SMs, compute capability 9.0) and the Triton compile, and runs inductor's lowering and
scheduling, which write the same kernels, fusions and call sequence a GPU run writes. Kernel sources are kept,
not compiled or timed.
Limits: autocast does not act on meta tensors, so `sample` casts the model to bf16 (an autocast run also casts the
weights every forward), and `train` keeps float32 parameters and casts the conv/linear ones to bf16 at the top of
the step (as autocast does; with --bf16-weights the conv/linear parameters are bf16 already, conv weights
channels_last, as train.bf16_weights gives the compiled model), with dropout off (its random ops need a real CUDA
generator here); SDPA takes its math path (bmm + softmax), since no fused attention backend is available; layout
optimization is inductor's own decision for the inference graph and forced for training, as the shipped configs do,
with the convolution backward's operands laid out by models/conv_backward_layout.py (unless --no-cl-backward).
Used before attempt 8 (bench/NOTES.md) to find the q/k/v bias passes and to read the GroupNorm reductions, and
after attempt 10 to count the MNIST step's kernels. Prints, per graph, the Triton launches by kernel kind and the
extern calls.
"""
import argparse
import glob
import os
import shutil
import sys
import tempfile
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import models.unet as unet  # noqa: E402
from models import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402


class H100:
    name = 'NVIDIA H100 80GB HBM3'
    major, minor, multi_processor_count, warp_size = 9, 0, 132, 32
    total_memory, L2_cache_size = 80 * 2 ** 30, 50 * 2 ** 20
    max_threads_per_multi_processor, max_threads_per_block, regs_per_multiprocessor = 2048, 1024, 65536
    shared_memory_per_block_optin, shared_memory_per_multiprocessor, shared_memory_per_block = 232448, 233472, 49152
    clock_rate, memory_clock_rate, memory_bus_width = 1980000, 2619000, 5120
    gcnArchName = uuid = 'none'


def pretend_cuda():
    """Make torch and inductor believe an H100 is present (after tracing: dynamo itself must not see it)."""
    import torch.utils._triton as torch_triton
    import torch._inductor.scheduler as scheduler
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    c = torch.cuda
    c.is_available, c.device_count, c.current_device = (lambda: True), (lambda: 1), (lambda: 0)
    c.get_device_properties = c._get_device_properties = lambda *a, **k: H100()
    c.get_device_capability, c.get_device_name = (lambda *a, **k: (9, 0)), (lambda *a, **k: H100.name)
    c.set_device = c._lazy_init = c.synchronize = c.set_rng_state = lambda *a, **k: None
    c.get_rng_state = lambda *a, **k: torch.zeros(16, dtype=torch.uint8)
    c._exchange_device = c._maybe_exchange_device = lambda idx: 0
    c.is_current_stream_capturing = lambda: False
    torch_triton.has_triton = scheduler.has_triton = lambda: True
    torch_triton.triton_backend = lambda: make_backend(GPUTarget('cuda', 90, 32))
    torch_triton.triton_hash_with_backend = lambda: 'NO-GPU'

    def cudnn_format(inp, weight, backend):        # cuDNN: channels_last if the input or the weight is
        cl = lambda t: t.dim() == 4 and torch._prims_common.suggest_memory_format(t) == torch.channels_last
        return torch.channels_last if cl(inp) or cl(weight) else torch.contiguous_format
    torch._C._conv_determine_backend_memory_format = cudnn_format


def capture_graphs(cfg, what, batch, bf16_weights=False):
    """[(name, FX graph, example inputs)] of the compiled sampling forward or training step, traced on meta."""
    import torch.nn.functional as F
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table
    from torch.func import functional_call
    embed = unet.timestep_embedding
    unet.timestep_embedding = lambda t, dim: embed(t, dim).to(torch.bfloat16)    # a bf16 model's input dtype
    if what == 'train':
        cfg['model']['params']['dropout'] = 0.0
    model = build_model(cfg['model']).to(device='meta')
    c, s = cfg['model']['params']['in_channels'], cfg['data']['img_size']
    x = torch.empty(batch, c, s, s, device='meta')
    t = torch.empty(batch, dtype=torch.long, device='meta')
    graphs = []

    def capture(name):
        def compiler(gm, example_inputs):
            graphs.append((name, gm, example_inputs))
            return gm
        return compiler
    backend = aot_autograd(fw_compiler=capture('forward'), bw_compiler=capture('backward'),
                           decompositions=select_decomp_table())
    if what == 'sample':
        model = model.to(torch.bfloat16).eval()
        with torch.no_grad():
            torch.compile(model, backend=backend, fullgraph=True)(x.to(torch.bfloat16), t)
    else:
        def cast(k):                              # the tensors autocast casts: conv and linear weights and biases
            return isinstance(model.get_submodule(k.rpartition('.')[0]), (torch.nn.Conv2d, torch.nn.Linear))

        def step(params, x, t, noise):            # float32 weights cast to bf16 inside the step, as autocast does
            out = functional_call(model, {k: v.to(torch.bfloat16) if cast(k) else v for k, v in params.items()},
                                  (x.to(torch.bfloat16), t))
            return F.mse_loss(out.float(), noise)
        params = dict(model.train().named_parameters())
        if bf16_weights:                          # models.BF16Weights: bf16 leaves for conv/linear, NHWC conv weights
            params = {k: v.detach().to(torch.bfloat16, memory_format=torch.channels_last if v.dim() == 4 else
                                       torch.preserve_format).requires_grad_() if cast(k) else v
                      for k, v in params.items()}
        torch.compile(step, backend=backend, fullgraph=True)(params, x, t, torch.empty_like(x)).backward()
    unet.timestep_embedding = embed
    return graphs


def summary(src):
    """Launch counts in one generated module: Triton kernels by kind (name without its number), extern calls."""
    import collections
    import re
    call = src[src.index('def call('):]
    kinds = collections.Counter(re.sub(r'_\d+$', '', m) for m in re.findall(r'(triton_\w+)\.run\(', call))
    kinds.update(re.findall(r'(extern_kernels\.\w+|torch\.ops\.aten\.\w+)(?:\.\w+)?\(', call))
    return kinds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=os.path.join(ROOT, 'configs/ddpm_cifar10.yaml'))
    p.add_argument('--what', choices=('sample', 'train'), default='sample')
    p.add_argument('--bf16-weights', action='store_true', help='train: as train.bf16_weights (models.BF16Weights)')
    p.add_argument('--no-cl-backward', action='store_true',
                   help='train: without models/conv_backward_layout.py (the setting before attempt 14)')
    p.add_argument('--batch', type=int, default=None, help='default: 500 for sample, 128 for train')
    p.add_argument('--norm-stats', default='auto', help='models.unet.GroupNorm.compiled_stats')
    p.add_argument('--top', type=int, default=12, help='kernel kinds listed per graph')
    p.add_argument('--out', default='inductor_code.py', help="the code file; training writes OUT's forward and "
                                                                "backward as two files (-forward, -backward)")
    args = p.parse_args()
    warnings.filterwarnings('ignore')              # autograd-on-meta and boxed-call notices
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp
    unet.GroupNorm.compiled_stats = args.norm_stats
    batch = args.batch or (500 if args.what == 'sample' else 128)
    graphs = capture_graphs(load_config(args.config), args.what, batch, args.bf16_weights)
    pretend_cuda()
    import torch._inductor.async_compile as async_compile
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx_inner
    async_compile.AsyncCompile.triton = lambda self, kernel_name, source_code, device_str='cuda': None
    inductor_config.compile_threads = 1
    inductor_config.force_layout_optimization = args.what == 'train'
    if args.what == 'train' and not args.no_cl_backward:     # as compile_model(force_layout_opt=True) does
        from models import conv_backward_layout
        conv_backward_layout.install()
    cuda = torch.device('cuda', 0)
    for name, gm, example_inputs in graphs:
        for n in gm.graph.nodes:                          # factory calls that name the meta device
            if n.kwargs.get('device') == torch.device('meta'):
                n.kwargs = {**n.kwargs, 'device': cuda}
        gm.recompile()
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        with mode:
            inputs = [torch.empty_strided(e.shape, e.stride(), dtype=e.dtype, device=cuda)
                      if isinstance(e, torch.Tensor) else e for e in example_inputs]
        FakeTensorProp(gm, mode).propagate(*inputs)
        cache = tempfile.mkdtemp(prefix='inductor-code-')
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = cache
        with inductor_config.patch(fx_graph_cache=False), mode:
            compile_fx_inner(gm, inputs, is_inference=args.what == 'sample', is_backward=name == 'backward')
        files = sorted(glob.glob(os.path.join(cache, '*', 'c*.py')), key=os.path.getmtime)
        root, ext = os.path.splitext(args.out)
        out = args.out if args.what == 'sample' else f'{root}-{name}{ext}'
        shutil.copy(files[-1], out)
        shutil.rmtree(cache, ignore_errors=True)
        kinds = summary(open(out).read())
        n_triton = sum(v for k, v in kinds.items() if k.startswith('triton_'))
        print(f'{out}: {name}, {n_triton} Triton launches, '
              f'{sum(v for k, v in kinds.items() if not k.startswith("triton_"))} extern/aten calls')
        for k, v in kinds.most_common(args.top):
            print(f'  {v:5d}  {k}')


if __name__ == '__main__':
    main()
