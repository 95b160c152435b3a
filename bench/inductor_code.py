"""Inductor's generated CUDA (Triton) code for the UNet, written on a machine without a GPU.

    python bench/inductor_code.py [--config configs/ddpm_cifar10.yaml] [--batch 500] [--out sample_code.py]

What it does: traces the UNet's no-grad forward (the sampling network call) with torch.compile on the meta device,
relabels the captured graph to fake CUDA tensors, stubs the few CUDA queries inductor makes (an H100's properties:
132 SMs, compute capability 9.0) and the Triton compile, and runs inductor's lowering and scheduling, which write
the same kernels, fusions and call sequence a GPU run writes. Kernel sources are kept, not compiled or timed.
Limits: the model is cast to bf16 instead of running under autocast (autocast does not act on meta tensors), so
the per-forward weight casts of an autocast run are missing; SDPA takes its math path (bmm + softmax), since no
fused attention backend is available; layout optimization is inductor's own decision for an inference graph. Used
before attempt 8 (bench/NOTES.md) to find the q/k/v bias passes and to read the GroupNorm reductions.
"""
import argparse
import glob
import os
import shutil
import sys
import tempfile

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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=os.path.join(ROOT, 'configs/ddpm_cifar10.yaml'))
    p.add_argument('--batch', type=int, default=500)
    p.add_argument('--norm-stats', default='auto', help='models.unet.GroupNorm.compiled_stats')
    p.add_argument('--out', default='inductor_code.py')
    args = p.parse_args()
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp
    cfg = load_config(args.config)
    unet.GroupNorm.compiled_stats = args.norm_stats
    embed = unet.timestep_embedding
    unet.timestep_embedding = lambda t, dim: embed(t, dim).to(torch.bfloat16)    # the bf16 model's input dtype
    model = build_model(cfg['model']).to(device='meta', dtype=torch.bfloat16).eval()
    c, s = cfg['model']['params']['in_channels'], cfg['data']['img_size']
    x = torch.empty(args.batch, c, s, s, device='meta', dtype=torch.bfloat16)
    t = torch.empty(args.batch, dtype=torch.long, device='meta')
    captured = {}

    def capture(gm, example_inputs):
        captured['gm'], captured['inputs'] = gm, example_inputs
        return gm
    with torch.no_grad():
        torch.compile(model, backend=aot_autograd(fw_compiler=capture, decompositions=select_decomp_table()),
                      fullgraph=True)(x, t)
    gm = captured['gm']
    cuda = torch.device('cuda', 0)
    for n in gm.graph.nodes:                          # factory calls that name the meta device
        if n.kwargs.get('device') == torch.device('meta'):
            n.kwargs = {**n.kwargs, 'device': cuda}
    gm.recompile()
    pretend_cuda()
    import torch._inductor.async_compile as async_compile
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx_inner
    async_compile.AsyncCompile.triton = lambda self, kernel_name, source_code, device_str='cuda': None
    inductor_config.compile_threads = 1
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        inputs = [torch.empty_strided(e.shape, e.stride(), dtype=e.dtype, device=cuda) for e in captured['inputs']]
    FakeTensorProp(gm, mode).propagate(*inputs)
    cache = tempfile.mkdtemp(prefix='inductor-code-')
    with inductor_config.patch(fx_graph_cache=False), mode:
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = cache
        compile_fx_inner(gm, inputs, is_inference=True)
    files = sorted(glob.glob(os.path.join(cache, '*', 'c*.py')), key=os.path.getmtime)
    shutil.copy(files[-1], args.out)
    shutil.rmtree(cache, ignore_errors=True)
    src = open(args.out).read()
    print(f"{args.out}: {src.count('@triton.jit')} Triton kernels, "
          f"{src.count('extern_kernels.convolution(')} convolutions, "
          f"{src.count('extern_kernels.addmm(') + src.count('extern_kernels.mm(')} GEMMs")


if __name__ == '__main__':
    main()
