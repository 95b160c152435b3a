"""Train a DDPM.

    accelerate-launch train_ddpm.py -c configs/ddpm_cifar10.yaml [-e EXP_DIR] [--key.sub value ...]

Reads top to bottom: config -> accelerator -> data -> model/EMA/optimizer -> resume -> loop
(loss, backward, clip, step, EMA; logging, sample grids and checkpoints at their intervals).
"""
import argparse
import contextlib
import math
import os
import signal
import sys
import time

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torchvision.utils import save_image

import datasets
from diffusions import DDPM
from models import EMA, BF16Weights, FlatParams, build_model, compile_model
from utils import checkpoint as ckpt
from utils.config import SHIPPED, ArgumentParser, parse_args, save_config
from utils.errors import UserError, run_main
from utils.images import quantize_uint8
from utils.logger import Logger


def get_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-c', '--config', required=True, help='YAML config; any key can be overridden as --key.sub value')
    p.add_argument('-e', '--exp-dir', default=None, help='run folder (default runs/exp-YYYY-mm-dd-HH-MM-SS)')
    return p


def check_config(cfg):
    """Values the type check cannot judge: one-line UserErrors before anything is created."""
    tc, dc, mp = cfg['train'], cfg['data'], cfg['model']['params']
    for key in ('n_steps', 'batch_size', 'print_freq', 'save_freq', 'sample_freq', 'keep_ckpts', 'fid_n_samples',
                'fid_steps'):
        if tc[key] < 1:
            raise UserError(f"train.{key} must be at least 1, got {tc[key]} (to turn grids or FID off, set "
                            f"train.n_samples or train.fid_freq to 0)")
    for key in ('lr', 'grad_clip'):
        if not tc[key] > 0:
            raise UserError(f"train.{key} must be positive, got {tc[key]}")
    if tc['mixed_precision'] not in (None, False, 'no', 'fp16', 'bf16'):
        raise UserError(f"train.mixed_precision must be null, no, fp16 or bf16, got {tc['mixed_precision']!r}")
    levels = len(mp['dim_mults'])
    if dc['img_size'] % 2 ** (levels - 1):
        raise UserError(f"data.img_size {dc['img_size']} must be divisible by {2 ** (levels - 1)} for a UNet with "
                        f"{levels} levels (model.params.dim_mults)")
    if dc['img_channels'] != mp['in_channels'] or mp['in_channels'] != mp['out_channels']:
        raise UserError(f"data.img_channels ({dc['img_channels']}), model.params.in_channels ({mp['in_channels']}) "
                        f"and out_channels ({mp['out_channels']}) must be equal")


def main():
    args, cfg = parse_args(get_parser(), reference=SHIPPED)
    check_config(cfg)
    tc = cfg['train']

    # ---------------------------------------------------------------- accelerator, run folder
    # cpu=True on a machine without CUDA lets `accelerate launch --multi_gpu --num_processes N` run N gloo processes
    mixed_precision = {False: 'no'}.get(tc['mixed_precision'], tc['mixed_precision'])  # YAML reads `no` as false
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    if tc['bf16_weights'] and accelerator.mixed_precision != 'bf16':
        raise UserError(f"train.bf16_weights needs bf16 mixed precision, but this run has "
                        f"{accelerator.mixed_precision!r}; pass --train.mixed_precision bf16 (or accelerate launch "
                        f"--mixed_precision bf16), or --train.bf16_weights false")
    if tc['batch_size'] % world:
        raise UserError(f"train.batch_size {tc['batch_size']} does not divide over {world} processes; "
                        f"use a multiple of {world}")
    batch = tc['batch_size'] // world                      # per process
    micro = tc['micro_batch'] or batch
    if batch % micro:
        raise UserError(f"train.micro_batch {micro} does not divide the per-process batch {batch}")
    resume_dir = None
    exp_dir = args.exp_dir
    if tc['resume'] is not None:
        if exp_dir is None and tc['resume'] != 'latest':  # EXP_DIR/ckpt/stepN -> EXP_DIR
            exp_dir = os.path.dirname(os.path.dirname(os.path.abspath(tc['resume'])))
        resume_dir = ckpt.resolve(tc['resume'], exp_dir)
    if exp_dir is None:
        exp_dir = os.path.join('runs', time.strftime('exp-%Y-%m-%d-%H-%M-%S'))
        exp_dir = broadcast_object_list([exp_dir])[0] if world > 1 else exp_dir   # process 0's name for all
    ckpt_root = os.path.join(exp_dir, 'ckpt')
    if resume_dir is None and os.path.isfile(os.path.join(ckpt_root, 'latest')):
        raise UserError(f"{exp_dir} already holds checkpoints; continue it with --train.resume latest, "
                        f"or pass another -e EXP_DIR")
    if accelerator.is_main_process:
        for sub in ('ckpt', 'samples', 'tensorboard'):
            os.makedirs(os.path.join(exp_dir, sub), exist_ok=True)
        save_config(cfg, os.path.join(exp_dir, 'config.yaml'))
    log = Logger(exp_dir, enabled=accelerator.is_main_process)
    log.info(f'exp dir: {exp_dir}; {world} process(es) on {device}, mixed precision: {accelerator.mixed_precision}')
    set_seed(cfg['seed'] + rank)        # the global RNGs (dropout) differ per process

    # ---------------------------------------------------------------- data
    dc = cfg['data']
    if dc['on_gpu']:
        images = datasets.load_uint8(dc, 'train')
        loader = datasets.DeviceLoader(images, batch, dc['random_flip'], cfg['seed'], device, rank, world)
        n_images = len(images)
    else:
        dataset = datasets.build_dataset(dict(dc, random_flip=False), 'train')   # flips happen on the device
        if len(dataset) < tc['batch_size']:
            raise UserError(f"the dataset has {len(dataset)} images, fewer than one batch (train.batch_size "
                            f"{tc['batch_size']}); lower the batch size or add images")
        loader = datasets.HostLoader(dataset, batch, cfg['seed'], rank, world, device, dc['random_flip'],
                                     num_workers=dc['num_workers'])
        n_images = len(dataset)
    log.info(f"data: {dc['name']} ({n_images} images), {'on the device' if dc['on_gpu'] else 'DataLoader'}; "
             f"batch {tc['batch_size']} = {world} x {batch}" + (f' in micro-batches of {micro}' if micro < batch else ''))

    # ---------------------------------------------------------------- model, EMA, optimizer, diffusion
    # `net` holds the fp32 weights: the optimizer, the EMA and the checkpoints use it. `model` is what runs the
    # forward: net itself, or (train.bf16_weights) a copy of it with bf16 conv/linear weights; compiled, wrapped.
    # With train.flat_params the optimizer sees one tensor, `flat.param`, of which net's parameters are views.
    diffusion = DDPM.from_config(cfg['diffusion'])
    net = build_model(cfg['model']).to(device)
    log.info(f'model: {sum(p.numel() for p in net.parameters()):,} parameters')
    memory_format = torch.channels_last if tc['channels_last'] else torch.contiguous_format
    torch.backends.cudnn.benchmark = tc['cudnn_benchmark']
    net = net.to(memory_format=memory_format)
    bf16_weights = BF16Weights(net) if tc['bf16_weights'] else None    # before the EMA copies net's layout
    model = bf16_weights.model if bf16_weights else net
    if tc['compile']:
        model = compile_model(model, tc['compile_mode'], tc['compile_force_layout_opt'], tune=tc['compile_tuning'])
    model = accelerator.prepare(model)
    # after prepare, which may give parameters new storage (.to(device) copies on a multi-process CPU run)
    flat = FlatParams(net, bf16_weights) if tc['flat_params'] else None
    params = [flat.param] if flat else list(net.parameters())
    ema = EMA(net, tc['ema_decay'], tc['ema_warmup'])
    optimizer = torch.optim.Adam(params, lr=tc['lr'], betas=tuple(tc['adam_betas']),
                                 weight_decay=tc['weight_decay'], fused=device.type == 'cuda')
    warmup = max(tc['warmup_steps'], 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    optimizer = accelerator.prepare(optimizer)

    # ---------------------------------------------------------------- resume
    step = 0
    step_gen = torch.Generator(device).manual_seed(cfg['seed'])     # t and ε; the same on every process
    if resume_dir is not None:
        step = load_checkpoint(resume_dir, net, ema, optimizer, scheduler, accelerator, loader, step_gen, rank, flat)
        if bf16_weights:
            bf16_weights.refresh()
            bf16_weights.match_optimizer_state(optimizer.optimizer)
        ema.decay = tc['ema_decay']           # the config's decay, even if the checkpoint was made with another
        log.info(f'resumed from {resume_dir} at step {step}')

    # ---------------------------------------------------------------- FID: everything that can fail, up front
    fid_setup = prepare_fid(accelerator, cfg) if tc['fid_freq'] > 0 else None

    # ---------------------------------------------------------------- fixed noise for sample grids
    n_grid = tc['n_samples']
    shape = (dc['img_channels'], dc['img_size'], dc['img_size'])
    grid_noise = torch.randn((n_grid, *shape), generator=torch.Generator().manual_seed(cfg['seed']))

    def save_checkpoint():
        tmp = ckpt.tmp_dir_for(ckpt_root, step)
        if accelerator.is_main_process:
            os.makedirs(tmp, exist_ok=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ckpt.save_file(net.state_dict(), os.path.join(tmp, 'model.pt'))
            ckpt.save_file(ema.state_dict(), os.path.join(tmp, 'ema.pt'))
            opt_state = flat.state_to_params(optimizer.state_dict()) if flat else optimizer.state_dict()
            ckpt.save_file(opt_state, os.path.join(tmp, 'optimizer.pt'))     # per parameter, flat or not
            scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            ckpt.save_file({'step': step, 'lr_scheduler': scheduler.state_dict(), 'scaler': scaler},
                           os.path.join(tmp, 'meta.pt'))
        ckpt.save_file(rng_state(loader, step_gen), os.path.join(tmp, f'rng_{rank}.pt'))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ckpt.publish(ckpt_root, step, tc['keep_ckpts'])
            log.info(f'saved checkpoint {os.path.join(ckpt_root, ckpt.step_dir_name(step))}')
        accelerator.wait_for_everyone()

    def check_finite():
        """Stop, before any save, if a loss or (without an fp16 loss scaler) a gradient norm was not finite."""
        if accelerator.reduce(nonfinite, 'max').item() > 0:
            raise UserError(f'the loss or the gradients became non-finite before step {step}; stopped without saving. '
                            f'The last good checkpoint in {ckpt_root} is untouched: lower train.lr or try '
                            f'train.mixed_precision no')

    def agree_to_stop() -> bool:
        """True when a signal reached any process. With several processes the flags are combined at the
        logging interval, where every process arrives at the same step, so all save and stop together."""
        if world == 1:
            return stop['signal'] is not None
        if step % tc['print_freq'] and step != tc['n_steps']:
            return False
        flag = torch.tensor(float(stop['signal'] is not None), device=device)
        return accelerator.reduce(flag, 'max').item() > 0

    # ---------------------------------------------------------------- Ctrl-C / SIGTERM: save, then exit
    stop = {'signal': None}

    def on_signal(signum, frame):
        stop['signal'] = signum
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)

    # ---------------------------------------------------------------- train
    model.train()
    loss_sum = torch.zeros((), device=device)      # summed on the device, read at print_freq only
    nonfinite = torch.zeros((), device=device)     # 1 once a loss or gradient norm was inf/nan; read before saves
    skip_on_overflow = accelerator.scaler is not None   # fp16: the scaler skips steps with inf gradients by design
    n_micro = batch // micro
    t_last, step_last = time.time(), step
    pbar = log.progress(total=tc['n_steps'], initial=step)
    stopping = False
    while step < tc['n_steps']:
        x = next(loader).contiguous(memory_format=memory_format)
        # t and ε for the whole global batch from a generator shared by all processes, each taking its slice:
        # neither micro-batching nor the number of processes changes what is drawn
        mine = slice(rank * batch, (rank + 1) * batch)
        t = torch.randint(0, diffusion.num_steps, (batch * world,), device=device, generator=step_gen)[mine]
        noise = torch.randn((batch * world, *x.shape[1:]), device=device, generator=step_gen)[mine]
        noise = noise.contiguous(memory_format=memory_format)
        for k in range(n_micro):
            sync = accelerator.no_sync(model) if k < n_micro - 1 else contextlib.nullcontext()
            part = slice(k * micro, (k + 1) * micro)
            with sync, accelerator.autocast():
                loss = diffusion.training_loss(model, x[part], t[part], noise[part]) / n_micro
            accelerator.backward(loss)
            loss_sum += loss.detach()
        if flat:
            flat.gather_grads()
        elif bf16_weights:
            bf16_weights.grads_to_master()
        grad_norm = accelerator.clip_grad_norm_(params, tc['grad_clip'])
        bad = ~torch.isfinite(loss_sum) if skip_on_overflow else ~(torch.isfinite(loss_sum) & torch.isfinite(grad_norm))
        nonfinite = torch.maximum(nonfinite, bad.float())
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if bf16_weights:
            bf16_weights.refresh()
        ema.update(net)
        step += 1
        pbar.update(1)

        if step % tc['print_freq'] == 0 or step == tc['n_steps']:
            check_finite()
            loss_mean = accelerator.reduce(loss_sum, 'mean') / (step - step_last)
            dt = time.time() - t_last
            stats = {'loss': loss_mean.item(), 'grad_norm': float(grad_norm), 'lr': scheduler.get_last_lr()[0],
                     'steps_per_s': (step - step_last) / dt, 'images_per_s': (step - step_last) * tc['batch_size'] / dt}
            if device.type == 'cuda':
                stats['max_mem_gib'] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            log.scalars(stats, step)
            loss_sum.zero_()
            t_last, step_last = time.time(), step
        stopping = agree_to_stop()
        if step % tc['save_freq'] == 0 or step == tc['n_steps'] or stopping:
            check_finite()
            save_checkpoint()
        if n_grid > 0 and (step % tc['sample_freq'] == 0 or step == tc['n_steps']) and not stopping:
            sample_grid(accelerator, ema.model, diffusion, grid_noise, cfg['seed'],
                        os.path.join(exp_dir, 'samples', f'step{step:07d}.png'))
        if fid_setup is not None and step % tc['fid_freq'] == 0 and not stopping:
            log.scalars({'fid': training_fid(accelerator, ema.model, cfg, fid_setup)}, step, prefix='eval')
        if stopping:
            log.info(f'stopped by a signal at step {step}; resume with --train.resume latest -e {exp_dir}')
            break
    pbar.close()
    log.close()
    accelerator.end_training()
    if stopping:
        sys.exit(128 + (stop['signal'] or signal.SIGTERM))


def rng_state(loader, step_gen) -> dict:
    """Every random state of this process: CPU and CUDA global generators (dropout), the t/ε generator
    and the data iterator."""
    return {'cpu': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            'step_gen': step_gen.get_state(),
            'loader': loader.state_dict()}


def load_checkpoint(folder, model, ema, optimizer, scheduler, accelerator, loader, step_gen, rank, flat=None) -> int:
    """Restore everything saved by save_checkpoint; returns the step to continue from."""
    ckpt.load_state_dict_checked(model, ckpt.load_file(os.path.join(folder, 'model.pt')), f'checkpoint {folder}')
    ema.load_state_dict(ckpt.load_file(os.path.join(folder, 'ema.pt')))
    opt_state = ckpt.load_file(os.path.join(folder, 'optimizer.pt'))
    try:
        optimizer.load_state_dict(flat.state_from_params(opt_state) if flat else opt_state)
    except ValueError as e:
        raise UserError(f"the optimizer state in {folder} does not fit this model ({e}); resume from a checkpoint "
                        f"of this config, or start a new run") from None
    meta = ckpt.load_file(os.path.join(folder, 'meta.pt'))
    scheduler.load_state_dict(meta['lr_scheduler'])
    if accelerator.scaler is not None and meta['scaler'] is not None:
        accelerator.scaler.load_state_dict(meta['scaler'])
    # data order, flips, t and ε are drawn the same on every process: take them from process 0's file, so a
    # run may resume on another number of processes (same global batch) and see the same global batches
    shared = ckpt.load_file(os.path.join(folder, 'rng_0.pt'))
    try:
        loader.load_state_dict(shared['loader'])
        step_gen.set_state(shared['step_gen'])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"the random state in {folder} does not fit this device ({type(e).__name__}): resume on the "
                        f"kind of device it was saved on (CPU or GPU), or start a new run") from None
    own = os.path.join(folder, f'rng_{rank}.pt')
    if os.path.isfile(own):            # the global RNGs (dropout); absent for a process the saved run lacked
        rng = ckpt.load_file(own)
        torch.set_rng_state(rng['cpu'])
        if rng['cuda'] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng['cuda'])
    return int(meta['step'])


@torch.no_grad()
def sample_grid(accelerator, ema_model, diffusion, noise, seed, path):
    """Sample the fixed grid noise with the EMA model and save the grid (main process).

    Every process runs the same small chain (it is a few seconds even for 64 images and 1000 steps), so all
    stay in step and the grid is the same whatever the number of processes. The chain's noise comes from
    its own generator, so a grid never touches the training RNG state.
    """
    device = accelerator.device
    with accelerator.autocast():
        x = diffusion.sample(ema_model, noise.to(device), torch.Generator(device).manual_seed(seed)).float()
    if accelerator.is_main_process:
        save_image((x.cpu() + 1) / 2, path, nrow=int(math.sqrt(len(noise))) or 1)
    accelerator.wait_for_everyone()


def on_main_process(accelerator, fn):
    """Run fn() on the main process only; every process returns its result or raises the same UserError.

    A failure on the main process must not leave the others waiting in the next collective.
    """
    result = [None, None]
    if accelerator.is_main_process:
        try:
            result = [fn(), None]
        except UserError as e:
            result = [None, str(e)]
    if accelerator.num_processes > 1:
        result = broadcast_object_list(result)
    if result[1] is not None:
        raise UserError(result[1])
    return result[0]


def prepare_fid(accelerator, cfg) -> dict:
    """Check the FID settings and get the reference statistics (computed and cached once, on the main process)
    before training starts, so a bad setting fails at once and never mid-run."""
    from diffusions import make_sampler
    from utils.fid import check_weights, load_stats, reference_from_config
    tc = cfg['train']
    try:
        diffusion = DDPM.from_config(cfg['diffusion'], skip_type='uniform', skip_steps=tc['fid_steps'])
        sampler = make_sampler(tc['fid_sampler'], diffusion)
    except UserError as e:
        raise UserError(f'train.fid_steps / train.fid_sampler: {e}') from None

    def reference():
        try:
            check_weights(tc['fid_weights'])
        except UserError:
            raise UserError(f"train.fid_weights {tc['fid_weights']} not found; pass an existing torch-fidelity "
                            f"Inception weights file, or null to let torch-fidelity download its own") from None
        if tc['fid_ref_stats'] is not None:
            return load_stats(tc['fid_ref_stats'])
        return reference_from_config(cfg['data'], 'train', weights_path=tc['fid_weights'],
                                     device=accelerator.device)['stats']
    return {'sampler': sampler, 'ref': on_main_process(accelerator, reference)}


@torch.no_grad()
def training_fid(accelerator, ema_model, cfg, setup) -> float:
    """FID of `train.fid_n_samples` EMA samples against the training set; every process samples its share.

    Only the main process runs the Inception network (seconds on a GPU); the others wait for its result.
    Noise comes from generators seeded per (process, batch), so the training RNG is untouched and the number
    is reproducible for a given number of processes.
    """
    from utils.fid import compute_fid
    tc, dc = cfg['train'], cfg['data']
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    per = math.ceil(tc['fid_n_samples'] / world)
    shape = (dc['img_channels'], dc['img_size'], dc['img_size'])
    chunks = []
    for b, start in enumerate(range(0, per, 500)):
        gen = torch.Generator(device).manual_seed(cfg['seed'] * 1000 + rank * 100 + b)
        noise = torch.randn((min(500, per - start), *shape), generator=gen, device=device)
        with accelerator.autocast():
            x = setup['sampler'].sample(ema_model, noise, gen).float()
        chunks.append(quantize_uint8(x))          # stays on the device for the gather
    images = accelerator.gather(torch.cat(chunks))[:tc['fid_n_samples']]
    return on_main_process(accelerator, lambda: compute_fid(images, setup['ref'], weights_path=tc['fid_weights'],
                                                            device=device, batch_size=250))


if __name__ == '__main__':
    run_main(main)
