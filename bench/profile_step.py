"""Where a training step's GPU time goes: torch.profiler over a few steps, kernels grouped by kind.

    python bench/profile_step.py --config configs/ddpm_cifar10.yaml --mode fast --steps 20 --out OUT_DIR
    python bench/profile_step.py --what sample --batch 500 --out OUT_DIR    # one sampling forward instead
    python bench/profile_step.py --what chain --batch 500 --out OUT_DIR     # one reverse step: forward + update

The step is the one `train_ddpm.py` runs (loss under autocast, backward, grad clip, fused Adam, foreach
EMA), built from the same modules, on random uint8 data kept on the GPU; `--mode plain|fast` and the
switches match `bench.py`'s modes. Prints the top kernels and the GPU time per kind (convolution, GEMM,
normalisation, layout conversion, elementwise, optimizer/EMA, copies), and writes OUT_DIR/kernels.txt and a
Chrome trace OUT_DIR/trace.json (open in chrome://tracing or Perfetto).
"""
import argparse
import collections
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datasets import DeviceLoader  # noqa: E402
from diffusions import DDPM  # noqa: E402
from models import EMA, BF16Weights, FlatParams, build_model, compile_model  # noqa: E402
from models.unet import GroupNorm  # noqa: E402
from utils.config import load_config  # noqa: E402

KINDS = [  # (kind, substrings of the kernel name), first match wins
    ('GEMM / attention', ('sdpa', 'flash', 'fmha', 'attention', 'nvjet')),   # before 'cudnn': cuDNN runs SDPA too
    ('layout conversion', ('nchwToNhwc', 'nhwcToNchw', 'transpose', 'permute')),
    ('convolution', ('conv', 'Conv', 'implicit_gemm', 'xmma_fprop', 'xmma_dgrad', 'xmma_wgrad', 'cudnn')),
    ('GEMM', ('gemm', 'Gemm', 'cutlass', 'sm90_xmma')),
    ('normalisation', ('norm', 'Norm', 'welford', 'reduction')),
    ('optimizer / EMA / clip', ('multi_tensor', 'foreach', 'adam', 'Adam', 'lerp')),
    ('copies', ('Memcpy', 'memcpy', 'copy', 'Copy')),
    ('elementwise / fused (triton)', ('triton', 'elementwise', 'vectorized', 'unrolled')),
]


# record_function ranges that can also be drawn on the GPU timeline (spanning kernels counted on their own)
ANNOTATIONS = ('Optimizer.', '## ', 'Torch-Compiled Region', 'CompiledFunction', 'ProfilerStep')


def kind_of(name: str) -> str:
    if name.startswith('triton_'):      # inductor's kernels: named after the ops they fuse, so sort by type
        return 'reductions, triton (norms)' if name.startswith(('triton_red', 'triton_per')) else 'elementwise, triton'
    for kind, keys in KINDS:
        if any(k in name for k in keys):
            return kind
    return 'other'


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=os.path.join(ROOT, 'configs/ddpm_cifar10.yaml'))
    p.add_argument('--mode', choices=('plain', 'fast'), default='fast')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--compile-mode', default='reduce-overhead')
    p.add_argument('--what', choices=('train', 'sample', 'chain'), default='train',
                   help='train: one training step; sample: one no-grad forward of the EMA-style eval model; '
                        'chain: one DDPM reverse step (the forward and the sampler update around it)')
    p.add_argument('--cudnn-benchmark', action='store_true')
    p.add_argument('--force-layout-opt', choices=('true', 'false'), default=None,
                   help="as train.compile_force_layout_opt (default: the config's)")
    p.add_argument('--norm-stats', choices=('auto', 'per_group', 'per_channel', 'per_chunk'), default='auto',
                   help='models.unet.GroupNorm.compiled_stats')
    p.add_argument('--bf16-weights', action='store_true', help='fast mode: as train.bf16_weights (models.BF16Weights)')
    p.add_argument('--flat-params', action='store_true', help='fast mode: as train.flat_params (models.FlatParams)')
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--warmup', type=int, default=30, help='steps before profiling (compile, CUDA-graph recording)')
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--top', type=int, default=25)
    p.add_argument('--out', default='profile')
    args = p.parse_args()
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    cfg = load_config(args.config)
    tc, dc = cfg['train'], cfg['data']
    fast = args.mode == 'fast'
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    force_layout = fast and args.what == 'train' and (tc['compile_force_layout_opt'] if args.force_layout_opt is None
                                                      else args.force_layout_opt == 'true')
    GroupNorm.compiled_stats = args.norm_stats

    images = torch.randint(0, 256, (10000, dc['img_channels'], dc['img_size'], dc['img_size']), dtype=torch.uint8)
    loader = DeviceLoader(images, args.batch, dc['random_flip'], 0, device)
    diffusion = DDPM.from_config(cfg['diffusion'])
    model = build_model(cfg['model']).to(device).to(memory_format=fmt)
    weights = BF16Weights(model) if fast and args.bf16_weights else None
    flat = FlatParams(model, weights) if fast and args.flat_params else None
    params = [flat.param] if flat else list(model.parameters())
    ema = EMA(model, tc['ema_decay'], tc['ema_warmup'])
    opt = torch.optim.Adam(params, lr=tc['lr'], fused=device.type == 'cuda')
    net = weights.model if weights else model
    if fast and args.what != 'train':       # as sample_ddpm.py --compile: inductor's own layout choice, freezing
        net = compile_model(net, args.compile_mode, freeze=True)
    elif fast:
        net = compile_model(net, args.compile_mode, force_layout)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast)
    gen = torch.Generator(device).manual_seed(0)

    def train_step():
        x = next(loader).contiguous(memory_format=fmt)
        t = torch.randint(0, diffusion.num_steps, (args.batch,), device=device, generator=gen)
        noise = torch.randn(x.shape, device=device, generator=gen).contiguous(memory_format=fmt)
        with autocast:
            loss = diffusion.training_loss(net, x, t, noise)
        loss.backward()
        if flat:
            flat.gather_grads()
        elif weights:
            weights.grads_to_master()
        torch.nn.utils.clip_grad_norm_(params, tc['grad_clip'], foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if weights:
            weights.refresh()
        ema.update(model)

    x_eval = torch.randn(args.batch, dc['img_channels'], dc['img_size'], dc['img_size'], device=device)
    x_eval = x_eval.contiguous(memory_format=fmt)

    @torch.no_grad()
    def sample_step():          # what one reverse step costs: the network forward at the sampling batch
        t = torch.randint(0, diffusion.num_steps, (args.batch,), device=device, generator=gen)
        with autocast:
            net(x_eval, t)

    x_chain = x_eval.clone()

    @torch.no_grad()
    def chain_step():           # one reverse step of the chain, as sample_ddpm.py runs it (always the same i)
        with autocast:
            diffusion.p_sample(net, x_chain, diffusion.num_steps - 1, gen)

    if args.what != 'train':
        model.eval()
    step = {'train': train_step, 'sample': sample_step, 'chain': chain_step}[args.what]
    for _ in range(args.warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(args.steps):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    wall = (time.time() - t0) / args.steps
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(args.steps):
            step()
        if device.type == 'cuda':
            torch.cuda.synchronize()
    os.makedirs(args.out, exist_ok=True)
    prof.export_chrome_trace(os.path.join(args.out, 'trace.json'))
    # device time per kernel: events that ran on the GPU (self device time), summed by name
    per_name, calls = collections.Counter(), collections.Counter()
    # only events that ran on the GPU (kernels, memcpy/memset): operator and graph annotations on the host side
    # also carry the device time of the kernels below them, and counting them would count those kernels twice
    # Annotations drawn on the GPU timeline (the optimizer's record_function range, `gpu_user_annotation`) span
    # kernels counted on their own: skip them too (attempt 6's files still count Optimizer.step#Adam.step).
    for e in prof.key_averages():
        if e.device_type != torch.autograd.DeviceType.CUDA or getattr(e, 'is_user_annotation', False) \
                or e.key.startswith(ANNOTATIONS):
            continue
        dev = getattr(e, 'self_device_time_total', None)
        if dev is None:
            dev = getattr(e, 'self_cuda_time_total', 0)
        per_name[e.key] += dev / args.steps / 1000          # ms per step
        calls[e.key] += e.count / args.steps
    per_kind = collections.Counter()
    for name, ms in per_name.items():
        per_kind[kind_of(name)] += ms
    total = sum(per_name.values())
    lines = [f'{args.what}, {args.mode} mode, compile {args.compile_mode}, {args.config}, batch {args.batch}, '
             f'channels_last {args.channels_last}, cudnn.benchmark {args.cudnn_benchmark}, '
             f'force_layout_opt {force_layout}, norm stats {args.norm_stats}, bf16 weights {weights is not None}, '
             f'flat params {flat is not None}: '
             f'{wall * 1000:.1f} ms per step on the host clock ({1 / wall:.1f} steps/s), '
             f'{total:.1f} ms of kernel time per step', '', 'GPU time per kind (ms per step):']
    lines += [f'  {kind:32s} {ms:8.2f}  {ms / total:6.1%}' for kind, ms in per_kind.most_common()] if total else []
    lines += ['', f'top {args.top} kernels (ms per step):']
    lines += [f'  {ms:8.3f}  {name[:140]}' for name, ms in per_name.most_common(args.top)]
    text = '\n'.join(lines)
    with open(os.path.join(args.out, 'kernels.tsv'), 'w') as f:     # every kernel, to match with inductor's code
        f.write('ms_per_step\tcalls_per_step\tname\n')
        f.writelines(f'{ms:.4f}\t{calls[name]:g}\t{name}\n' for name, ms in per_name.most_common())
    with open(os.path.join(args.out, 'kernels.txt'), 'w') as f:
        f.write(text + '\n\n' + prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=40))
    print(text)


if __name__ == '__main__':
    main()
