"""Sample from a trained DDPM: one PNG per image, deterministic and resumable on any number of processes.

    accelerate-launch sample_ddpm.py -c CONFIG [--seed SEED] --weights WEIGHTS [--load_ema LOAD_EMA]
        [--var_type VAR_TYPE] [--skip_type SKIP_TYPE] [--skip_steps SKIP_STEPS] --n_samples N_SAMPLES
        --save_dir SAVE_DIR [--micro_batch MICRO_BATCH] [--mode {sample,denoise,progressive}]
        [--n_denoise N_DENOISE] [--n_progressive N_PROGRESSIVE] [--sampler {ddpm,ddim,dpm_solver++}]
        [--eta ETA] [--grid [N]] [--save_npz] [--fast] [--compile [MODE]] [--compile_tuning] [--key.sub value ...]

Modes: `sample` writes SAVE_DIR/NNNNNN.png per image; `denoise` a row of n_denoise x_t snapshots along the
chain (ending at the sample); `progressive` a row of n_progressive predicted-x0 snapshots.

Determinism: image i belongs to batch b = i // micro_batch; batch b always has micro_batch images (the
last one is computed in full and cut), and its initial noise and every step's noise come from a generator
seeded by (seed, b). Pending batches go to processes round-robin, so the files do not depend on the number
of processes. A rerun skips batches whose files all exist; every file is written atomically.
"""
import argparse
import hashlib
import math
import os

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm import tqdm

from diffusions import SAMPLERS, SKIP_TYPES, VAR_TYPES, default_skip_type, from_config, make_sampler
from models import build_model
from models.convert import find_diffusers_folder, from_diffusers
from models.fast import COMPILE_MODES, compile_for_sampling
from utils import checkpoint as ckpt
from utils import images
from utils.config import ArgumentParser, parse_args
from utils.errors import UserError, run_main
from utils.files import atomic_write, check_writable, sha256

MODES = ('sample', 'denoise', 'progressive')
SETTINGS_FILE = 'sample_args.yaml'      # what the images in SAVE_DIR were made with; checked on a rerun


def str2bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ('true', 't', 'yes', 'y', '1'):
        return True
    if t in ('false', 'f', 'no', 'n', '0'):
        return False
    raise UserError(f"--load_ema expects true or false, got {text!r}")


def get_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument('-c', '--config', required=True, help='the YAML config the weights were trained with')
    p.add_argument('--seed', type=int, default=None, help="base seed of every batch's noise (default: the config's seed)")
    p.add_argument('--weights', required=True, help='checkpoint folder EXP_DIR/ckpt/stepNNNNNNN, a model/ema .pt or '
                                                    '.safetensors file, or a diffusers UNet2DModel folder (e.g. '
                                                    'google/ddpm-cifar10-32)')
    p.add_argument('--load_ema', default='true', help='true: the EMA weights of a checkpoint folder (default); false: the raw ones')
    p.add_argument('--var_type', default=None, help=f"DDPM variance: {' | '.join(VAR_TYPES)} (default: the config's)")
    p.add_argument('--skip_type', default=None, help=f"timestep respacing: {' | '.join(SKIP_TYPES)} (default with "
                                                    f"--skip_steps: the sampler's, uniform for ddpm, logsnr for ddim "
                                                    f"and dpm_solver++)")
    p.add_argument('--skip_steps', type=int, default=None, help='sample with this many steps (default: all T)')
    p.add_argument('--n_samples', type=int, required=True, help='number of images (or rows)')
    p.add_argument('--save_dir', required=True, help='output folder; rerunning the same command resumes it')
    p.add_argument('--micro_batch', type=int, default=64, help='images per forward pass, per process (default 64)')
    p.add_argument('--mode', default='sample', metavar='{' + ','.join(MODES) + '}', help=f"{' | '.join(MODES)} (default sample)")
    p.add_argument('--n_denoise', type=int, default=20, help='x_t snapshots per row in denoise mode (default 20)')
    p.add_argument('--n_progressive', type=int, default=20, help='predicted-x0 snapshots per row in progressive mode (default 20)')
    p.add_argument('--sampler', default='ddpm', metavar='{' + ','.join(SAMPLERS) + '}', help=f"{' | '.join(SAMPLERS)} (default ddpm)")
    p.add_argument('--eta', type=float, default=0.0, help='DDIM noise scale: 0 deterministic, 1 like DDPM (default 0)')
    p.add_argument('--grid', type=int, nargs='?', const=64, default=0, metavar='N',
                   help='also write SAVE_DIR/grid/grid.png of the first N images or rows (N defaults to 64)')
    p.add_argument('--save_npz', action='store_true', help='also write SAVE_DIR/samples.npz (N×H×W×C uint8) for FID tools')
    p.add_argument('--allow_config_change', action='store_true',
                   help="sample although the checkpoint was made with another network shape, chain or image size")
    p.add_argument('--fast', action='store_true',
                   help='the recommended setting on a GPU: bf16 autocast, --compile reduce-overhead, --compile_tuning')
    p.add_argument('--compile', nargs='?', const='default', default=None, metavar='MODE',
                   help='torch.compile the model (models/fast); MODE reduce-overhead adds CUDA graphs')
    p.add_argument('--compile_tuning', action='store_true',
                   help="with --compile: inductor's coordinate-descent tuning of its kernels (minutes more compiling, "
                        "cached; a few %% faster sampling)")
    return p


def batch_seed(seed: int, b: int) -> int:
    """The 63-bit seed of batch b: a hash of (seed, b), so nearby seeds and batches give unrelated streams."""
    digest = hashlib.sha256(f'ddpm-sample:{seed}:{b}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') & ((1 << 63) - 1)


def batch_generator(seed: int, b: int, device) -> torch.Generator:
    """The generator of batch b on `device`: it draws the batch's x_T, then every step's noise."""
    return torch.Generator(device=device).manual_seed(batch_seed(seed, b))


def snapshot_steps(num_steps: int, n: int) -> list:
    """n distinct step positions 0 … num_steps-1, evenly spread and ending at the last (the final image)."""
    if n == 1:
        return [num_steps - 1]
    return [round(k * (num_steps - 1) / (n - 1)) for k in range(n)]


def sample_batch(sampler, model, x_T, generator, mode, steps, step_bar=None):
    """Run the chain on one batch. Returns B×C×H×(k·W) floats: the final images (k = 1) or rows of snapshots.
    `step_bar` (a tqdm bar, optional) counts the chain's steps."""
    keep = set(steps)
    frames = []
    if step_bar is not None:
        step_bar.reset(total=sampler.num_steps)
    for k, (x, x0) in enumerate(sampler.sample_loop(model, x_T, generator)):
        if mode != 'sample' and k in keep:
            frames.append((x if mode == 'denoise' else x0).float())
        if step_bar is not None:
            step_bar.update(1)
    return x.float() if mode == 'sample' else torch.cat(frames, dim=3)


def check_args(args):
    """Every check that needs no file: one-line UserErrors."""
    if args.mode not in MODES:
        raise UserError(f"unknown --mode {args.mode!r}; choose one of {', '.join(MODES)}")
    if args.sampler not in SAMPLERS:
        raise UserError(f"unknown --sampler {args.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if args.var_type is not None and args.var_type not in VAR_TYPES:
        raise UserError(f"unknown --var_type {args.var_type!r}; choose one of {', '.join(VAR_TYPES)}")
    if args.skip_type is not None and args.skip_type not in SKIP_TYPES:
        raise UserError(f"unknown --skip_type {args.skip_type!r}; choose one of {', '.join(SKIP_TYPES)}")
    if args.skip_type is not None and args.skip_steps is None:
        raise UserError(f"--skip_type {args.skip_type} needs --skip_steps S (the number of sampling steps)")
    if args.n_samples < 1:
        raise UserError(f"--n_samples must be at least 1, got {args.n_samples}")
    if args.micro_batch < 1:
        raise UserError(f"--micro_batch must be at least 1, got {args.micro_batch}")
    if args.grid < 0:
        raise UserError(f"--grid N must be at least 0, got {args.grid}")
    if args.sampler != 'ddim' and args.eta != 0:
        raise UserError(f"--eta applies to --sampler ddim only (got --sampler {args.sampler})")
    if args.save_npz and args.mode != 'sample':
        raise UserError(f"--save_npz stores final samples: use it with --mode sample, not {args.mode}")
    check_writable(args.save_dir, '--save_dir', folder=True)
    if args.compile is not None and args.compile not in COMPILE_MODES:
        raise UserError(f"--compile {args.compile}: choose one of {', '.join(COMPILE_MODES)}")


def check_settings(path: str, settings: dict):
    """Refuse to resume into a folder whose images were made with other settings."""
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            old = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read {path} ({e}); delete it or use a new --save_dir") from None
    if not isinstance(old, dict):
        raise UserError(f"{path} is not a settings file; delete it or use a new --save_dir")
    for key in settings:
        if key == 'weights':                    # where the weights were: their sha256 is what must match
            continue
        if key not in old:
            raise UserError(f"--save_dir holds images whose {key} was not recorded (see {path}: an older version "
                            f"wrote it); use a new --save_dir")
        if old[key] != settings[key]:
            raise UserError(f"--save_dir holds images made with {key} = {old[key]!r}, not {settings[key]!r} "
                            f"(see {path}); use a new --save_dir or the same settings to resume")


def load_weights(args, cfg):
    """(state_dict, the file it came from, lines to log) of --weights: a checkpoint folder of this repo (its EMA or
    raw weights; checked against what made it), one weights file, or a diffusers UNet2DModel folder (e.g. the
    authors' google/ddpm-cifar10-32, converted by models/convert.py; its network must be the config's)."""
    folder = find_diffusers_folder(args.weights) if os.path.isdir(args.weights) else None
    if folder is not None:
        params, sd = from_diffusers(args.weights)
        want = {k: v for k, v in cfg['model']['params'].items() if k != 'dropout'}
        got = {k: v for k, v in params.items() if k != 'dropout'}
        if got != want:
            key = next(k for k in want if want[k] != got.get(k))
            raise UserError(f"the diffusers model in {folder} has model.params.{key} = {got.get(key)!r}, the config "
                            f"{want[key]!r}; use the config of that network (configs/ddpm_cifar10.yaml for "
                            f"google/ddpm-cifar10-32, configs/ddpm_celebahq.yaml for google/ddpm-celebahq-256)")
        st = os.path.join(folder, 'diffusion_pytorch_model.safetensors')
        return sd, st if os.path.isfile(st) else os.path.join(folder, 'diffusion_pytorch_model.bin'), []
    meta = os.path.join(args.weights, 'meta.pt')
    notes = ckpt.check_provenance(ckpt.load_file(meta).get('provenance'), ckpt.provenance(cfg), f'checkpoint '
                                  f'{args.weights}', args.allow_config_change, '--allow_config_change') \
        if os.path.isfile(meta) else []
    return ckpt.load_model_weights(args.weights, use_ema=args.load_ema), \
        ckpt.weights_file(args.weights, args.load_ema), notes


def load_model(args, cfg):
    """(the config's network with --weights loaded, in eval mode without gradients, the weights file, lines to log)."""
    model = build_model(cfg['model'])
    sd, weights_file, notes = load_weights(args, cfg)
    ckpt.load_state_dict_checked(model, sd, f"weights {args.weights}")
    return model.eval().requires_grad_(False), weights_file, notes


def main(argv=None):
    args, cfg = parse_args(get_parser(), argv)
    args.load_ema = str2bool(args.load_ema)
    if args.fast:
        args.compile, args.compile_tuning = args.compile or 'reduce-overhead', True
    check_args(args)
    seed = cfg['seed'] if args.seed is None else args.seed
    skip_type = args.skip_type or (default_skip_type(args.sampler) if args.skip_steps is not None else None)

    # ---------------------------------------------------------------- diffusion, sampler, model (CPU)
    diffusion = from_config(cfg['diffusion'], var_type=args.var_type, skip_type=skip_type, skip_steps=args.skip_steps)
    sampler = make_sampler(args.sampler, diffusion, args.eta)
    S = diffusion.num_steps
    n_frames = {'sample': 1, 'denoise': args.n_denoise, 'progressive': args.n_progressive}[args.mode]
    if args.mode != 'sample' and not 1 <= n_frames <= S:
        raise UserError(f"--n_{args.mode} must be in [1, {S}] (the number of sampling steps), got {n_frames}")
    steps = snapshot_steps(S, n_frames)
    model, weights_file, notes = load_model(args, cfg)

    # ---------------------------------------------------------------- processes, settings, pending batches
    # N gloo processes on a CPU-only machine; --fast: bf16 autocast (else what accelerate launch/config says)
    accelerator = Accelerator(mixed_precision='bf16' if args.fast else None, cpu=not torch.cuda.is_available())
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    settings = dict(weights=os.path.realpath(args.weights), weights_sha256=sha256(weights_file),
                    load_ema=args.load_ema, model=cfg['model'], diffusion=cfg['diffusion'],
                    img_size=cfg['data']['img_size'], precision=accelerator.mixed_precision, compile=args.compile,
                    seed=seed, micro_batch=args.micro_batch, sampler=args.sampler, eta=args.eta,
                    var_type=diffusion.var_type, skip_type=skip_type, skip_steps=args.skip_steps, mode=args.mode,
                    n_frames=n_frames)
    settings_path = os.path.join(args.save_dir, SETTINGS_FILE)
    check_settings(settings_path, settings)
    for line in notes:
        accelerator.print(line)
    model = model.to(device)                    # unwrapped: no DDP for sampling
    if args.compile:               # every batch has micro_batch images: static shapes, graph-friendly
        model = compile_for_sampling(model, args.compile, tune=args.compile_tuning)   # weights: constants
    n, mb = args.n_samples, args.micro_batch
    path_of = lambda i: os.path.join(args.save_dir, f'{i:06d}.png')      # 000000.png, ..., 999999.png, 1000000.png
    n_batches = math.ceil(n / mb)
    batch_ids = lambda b: range(b * mb, min((b + 1) * mb, n))
    pending = None
    if accelerator.is_main_process:
        os.makedirs(args.save_dir, exist_ok=True)
        if not os.path.isfile(settings_path):
            atomic_write(settings_path, lambda f: yaml.safe_dump(settings, f, sort_keys=False), mode='w')
        pending = [b for b in range(n_batches) if not all(os.path.isfile(path_of(i)) for i in batch_ids(b))]
    pending = broadcast_object_list([pending])[0] if world > 1 else pending   # one list for all processes
    mine = pending[rank::world]
    n_todo = sum(len(batch_ids(b)) for b in pending)
    accelerator.print(f"{args.mode}: {n} images with {args.sampler} ({S} steps) on {world} process(es), "
                      f"{n - n_todo} already in {args.save_dir}, micro-batch {mb}")

    # ---------------------------------------------------------------- sample
    C, H = cfg['model']['params']['in_channels'], cfg['data']['img_size']
    bar = tqdm(total=n, initial=n - n_todo, unit='img', desc=args.mode, dynamic_ncols=True,
               disable=not accelerator.is_main_process)
    step_bar = tqdm(total=S, desc='steps', unit='step', leave=False, dynamic_ncols=True,
                    disable=True if not accelerator.is_main_process else None)     # the current batch's chain
    with torch.no_grad():
        for r, b in enumerate(mine):
            g = batch_generator(seed, b, device)
            x_T = torch.randn((mb, C, H, H), generator=g, device=device)
            with accelerator.autocast():
                out = images.to_uint8(sample_batch(sampler, model, x_T, g, args.mode, steps, step_bar))
            for k, i in enumerate(batch_ids(b)):
                images.save_png(out[k], path_of(i))
            # this round of `world` batches runs in parallel: count them all on the main process's bar
            bar.update(sum(len(batch_ids(c)) for c in pending[r * world:(r + 1) * world]))
    step_bar.close()
    bar.close()

    # ---------------------------------------------------------------- grid, npz (main process, from the files)
    if args.grid or args.save_npz:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if args.grid:
                k = min(args.grid, n)
                first = [torch.from_numpy(images.load_png(path_of(i))).permute(2, 0, 1) for i in range(k)]
                nrow = math.ceil(math.sqrt(k)) if args.mode == 'sample' else 1
                os.makedirs(os.path.join(args.save_dir, 'grid'), exist_ok=True)
                images.save_png(images.grid(first, nrow), os.path.join(args.save_dir, 'grid', 'grid.png'))
            if args.save_npz:
                images.save_npz(np.stack([images.load_png(path_of(i)) for i in range(n)]),
                                os.path.join(args.save_dir, 'samples.npz'))
    accelerator.print(f"done: {n} images in {args.save_dir}")


if __name__ == '__main__':
    run_main(main)
