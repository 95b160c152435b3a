"""Where a training step's GPU time goes: torch.profiler over a few steps, kernels grouped by kind.

    python bench/profile_step.py -c configs/ddpm_cifar10.yaml --train.fast true --steps 20 --out OUT_DIR
    python bench/profile_step.py -c configs/ddpm_cifar10.yaml --what sample --batch 500 --out OUT_DIR
    python bench/profile_step.py -c configs/ddpm_cifar10.yaml --what chain --batch 500 --out OUT_DIR
    accelerate launch --multi_gpu --num_processes 2 bench/profile_step.py --train.fast true \
        --train.batch_size 256 --out OUT_DIR          # one step on 2 GPUs, 128 images each

`train` profiles the step train_ddpm.py runs: its own build_state and utils.train_state.train_step, with the
config and any `--key value` overrides (ablations: `--train.flat_params false`), on random uint8 data kept on the
GPU. `sample` profiles one no-grad forward and `chain` one DDPM reverse step (forward and sampler update), with
the model prepared as `sample_ddpm.py --fast` prepares it (`--plain`: eager fp32). Prints the step's wall time and
its kernel time (kernel time well below the wall time: the GPU waits on the host), the GPU time per kind
(convolution, GEMM, normalisation, layout conversion, elementwise, optimizer/EMA, copies) and the top kernels, and
writes OUT_DIR/kernels.txt, OUT_DIR/kernels.tsv and a Chrome trace OUT_DIR/trace.json (chrome://tracing or
Perfetto). Under `accelerate launch` with N processes, `train` profiles the step of N processes sharing the
global batch (`train.batch_size`, as train_ddpm.py shares it), the gradient all-reduce counted as
`communication`; every process profiles, process 0 writes the files.
"""
import argparse
import collections
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from accelerate import Accelerator  # noqa: E402

import train_ddpm  # noqa: E402
from datasets import DeviceLoader  # noqa: E402
from diffusions import from_config  # noqa: E402
from models import build_model  # noqa: E402
from models.fast import compile_for_sampling  # noqa: E402
from utils.config import parse_args  # noqa: E402
from utils.train_state import train_step  # noqa: E402

KINDS = [  # (kind, substrings of the kernel name), first match wins
    ('communication', ('nccl', 'AllReduce', 'allreduce', 'Broadcast')),
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
    p.add_argument('-c', '--config', default=os.path.join(ROOT, 'configs/ddpm_cifar10.yaml'))
    p.add_argument('--what', choices=('train', 'sample', 'chain'), default='train',
                   help='train: one training step; sample: one no-grad forward; chain: one DDPM reverse step')
    p.add_argument('--plain', action='store_true', help='sample/chain: eager fp32 instead of sample_ddpm.py --fast')
    p.add_argument('--batch', type=int, default=None, help='images per step (default: the config\'s batch)')
    p.add_argument('--warmup', type=int, default=30, help='steps before profiling (compile, CUDA-graph recording)')
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--top', type=int, default=25)
    p.add_argument('--out', default='profile')
    args, cfg = parse_args(p)
    cfg = train_ddpm.resolve_speed(cfg)
    train_ddpm.check_config(cfg)
    tc, dc = cfg['train'], cfg['data']
    mp = {False: 'no'}.get(tc['mixed_precision'], tc['mixed_precision'])
    accelerator = Accelerator(mixed_precision=mp if args.what == 'train' else 'no' if args.plain else 'bf16',
                              cpu=not torch.cuda.is_available())
    device, world = accelerator.device, accelerator.num_processes
    batch = args.batch or tc['batch_size']
    if args.what == 'train':
        if batch % world:
            raise SystemExit(f'error: batch {batch} does not divide over {world} processes')
        batch //= world                     # this process's share of the global batch, as train_ddpm.py takes it
    diffusion = from_config(cfg['diffusion'])
    gen = torch.Generator(device).manual_seed(0)
    if args.what == 'train':
        images = torch.randint(0, 256, (10000, dc['img_channels'], dc['img_size'], dc['img_size']), dtype=torch.uint8)
        loader = DeviceLoader(images, batch, dc['random_flip'], 0, device)
        state = train_ddpm.build_state(cfg, accelerator, loader)
        state.model.train()
        fmt = torch.channels_last if tc['channels_last'] else torch.contiguous_format

        def step():
            train_step(state, diffusion, accelerator, next(loader).contiguous(memory_format=fmt), tc['grad_clip'],
                       tc['micro_batch'])
        setting = f"speed: {train_ddpm.speed_summary(cfg)}"
    else:
        net = build_model(cfg['model']).to(device).eval().requires_grad_(False)
        if not args.plain:
            net = compile_for_sampling(net, 'reduce-overhead', tune=True)
        x = torch.randn(batch, dc['img_channels'], dc['img_size'], dc['img_size'], device=device)

        @torch.no_grad()
        def step():
            with accelerator.autocast():
                if args.what == 'sample':
                    net(x, torch.randint(0, diffusion.num_steps, (batch,), device=device, generator=gen))
                else:        # one reverse step of the chain, as sample_ddpm.py runs it (always the same i)
                    diffusion.p_sample(net, x, diffusion.num_steps - 1, gen)
        setting = 'eager fp32' if args.plain else 'as sample_ddpm.py --fast'
    for _ in range(args.warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    accelerator.wait_for_everyone()
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
    if not accelerator.is_main_process:
        return
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
    lines = [f'{args.what}, {args.config}, batch {batch}' + (f' per process, {world} processes' if world > 1 else '') +
             f', {setting}: '
             f'{wall * 1000:.1f} ms per step on the host clock ({1 / wall:.1f} steps/s), '
             f'{total:.1f} ms of kernel time per step',
             '', 'GPU time per kind (ms per step):']
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
