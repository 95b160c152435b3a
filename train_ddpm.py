"""Train a DDPM.

    accelerate-launch train_ddpm.py -c configs/ddpm_cifar10.yaml [-e EXP_DIR] [--key.sub value ...]

Reads top to bottom: config -> accelerator and run folder -> data -> model, EMA, optimizer (build_state) ->
resume -> loop of train_step (utils/train_state.py), with logging, sample grids, FID and checkpoints at their
intervals. `--train.fast true` turns on the speed layer (models/fast); off, its FastWeights is a pass-through.
"""
import argparse
import math
import os
import signal
import sys
import time

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

import datasets
from diffusions import default_skip_type, from_config, make_sampler
from models import EMA, build_model
from models.fast import COMPILE_MODES, FastWeights, compile_for_training
from utils import checkpoint as ckpt
from utils import images, run_folder
from utils.config import ArgumentParser, parse_args, save_config
from utils.errors import UserError, run_main
from utils.files import check_writable
from utils.logger import Logger
from utils.train_state import TrainState, train_step

# What `train.fast` gives each speed switch left null in the config; `train.fast false` gives the plain values.
FAST = {'data.on_gpu': True, 'train.mixed_precision': 'bf16', 'train.bf16_weights': True, 'train.flat_params': True,
        'train.compile': True, 'train.compile_mode': 'reduce-overhead', 'train.compile_tuning': True}
PLAIN = {'data.on_gpu': False, 'train.mixed_precision': None, 'train.bf16_weights': False, 'train.flat_params': False,
         'train.compile': False, 'train.compile_mode': 'default', 'train.compile_tuning': False}


def get_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-c', '--config', required=True, help='YAML config; any key can be overridden as --key.sub value')
    p.add_argument('-e', '--exp-dir', default=None, help='run folder (default runs/exp-YYYY-mm-dd-HH-MM-SS)')
    return p


def resolve_speed(cfg):
    """Fill each speed switch left null with its `train.fast` value (FAST) or its plain one (PLAIN), in place."""
    if not isinstance(cfg['train']['fast'], bool):
        raise UserError(f"train.fast must be true or false, got {cfg['train']['fast']!r}")
    for key, value in (FAST if cfg['train']['fast'] else PLAIN).items():
        section, name = key.split('.')
        if cfg[section][name] is None:
            cfg[section][name] = value
    return cfg


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
    for section, key in (('train', 'n_samples'), ('train', 'micro_batch'), ('train', 'warmup_steps'),
                         ('train', 'fid_freq'), ('train', 'weight_decay'), ('data', 'num_workers')):
        if cfg[section][key] < 0:
            raise UserError(f"{section}.{key} must be at least 0, got {cfg[section][key]}")
    betas = tc['adam_betas']
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                  for b in betas):
        raise UserError(f"train.adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; got {betas!r}")
    if not 0 <= tc['ema_decay'] <= 1:
        raise UserError(f"train.ema_decay must be in [0, 1] (the paper: 0.9999), got {tc['ema_decay']}")
    if tc['mixed_precision'] not in (None, False, 'no', 'fp16', 'bf16'):
        raise UserError(f"train.mixed_precision must be null, no, fp16 or bf16, got {tc['mixed_precision']!r}")
    for key in ('data.on_gpu', 'train.bf16_weights', 'train.flat_params', 'train.compile', 'train.compile_tuning',
                'train.compile_force_layout_opt', 'train.channels_last', 'train.cudnn_benchmark'):
        section, name = key.split('.')
        if not isinstance(cfg[section][name], bool):
            raise UserError(f"{key} must be true or false (or null: as train.fast), got {cfg[section][name]!r}")
    if tc['compile_mode'] not in COMPILE_MODES:
        raise UserError(f"train.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {tc['compile_mode']!r}")
    levels = len(mp['dim_mults'])
    if dc['img_size'] % 2 ** (levels - 1):
        raise UserError(f"data.img_size {dc['img_size']} must be divisible by {2 ** (levels - 1)} for a UNet with "
                        f"{levels} levels (model.params.dim_mults)")
    if dc['img_channels'] != mp['in_channels'] or mp['in_channels'] != mp['out_channels']:
        raise UserError(f"data.img_channels ({dc['img_channels']}), model.params.in_channels ({mp['in_channels']}) "
                        f"and out_channels ({mp['out_channels']}) must be equal")


def make_loader(cfg, accelerator, batch):
    """Endless batches of this process's `batch` images, float32 in [-1, 1] on its device; and the dataset size."""
    dc, tc, rank, world = cfg['data'], cfg['train'], accelerator.process_index, accelerator.num_processes
    if dc['on_gpu']:
        images_uint8 = datasets.load_uint8(dc, 'train')
        loader = datasets.DeviceLoader(images_uint8, batch, dc['random_flip'], cfg['seed'], accelerator.device,
                                       rank, world)
        return loader, len(images_uint8)
    dataset = datasets.build_dataset(dc, 'train')
    if len(dataset) < tc['batch_size']:
        raise UserError(f"the dataset has {len(dataset)} images, fewer than one batch (train.batch_size "
                        f"{tc['batch_size']}); lower the batch size or add images")
    loader = datasets.HostLoader(dataset, batch, cfg['seed'], rank, world, accelerator.device, dc['random_flip'],
                                 num_workers=dc['num_workers'])
    return loader, len(dataset)


def build_state(cfg, accelerator, loader) -> TrainState:
    """The network, the speed layer over it, the EMA, Adam and the learning-rate warm-up, as the config says."""
    tc, device = cfg['train'], accelerator.device
    torch.backends.cudnn.benchmark = tc['cudnn_benchmark']
    net = build_model(cfg['model']).to(device)
    if tc['channels_last']:
        net = net.to(memory_format=torch.channels_last)
    # net keeps the fp32 weights: the optimizer, the EMA and the checkpoints use it. weights.model runs the forward:
    # net itself, or its bf16 copy (train.bf16_weights); train.flat_params lays the parameters out in one buffer.
    weights = FastWeights(net, bf16_copy=tc['bf16_weights'], flat=tc['flat_params'])
    model = weights.model
    if tc['compile']:
        model = compile_for_training(model, tc['compile_mode'], tc['compile_force_layout_opt'], tc['compile_tuning'])
    if not weights.reduces_grads:          # several processes: DDP averages the gradients (else FastWeights does)
        model = accelerator.prepare(model)
    ema = EMA(net, tc['ema_decay'], tc['ema_warmup'])
    weights.attach_ema(ema)
    optimizer = torch.optim.Adam(weights.params, lr=tc['lr'], betas=tuple(tc['adam_betas']),
                                 weight_decay=tc['weight_decay'], fused=device.type == 'cuda')
    warmup = max(tc['warmup_steps'], 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    if accelerator.scaler is not None:     # fp16: accelerate's wrapper runs the loss scaler's step (without a scaler
        optimizer = accelerator.prepare(optimizer)    # it only adds host work: two package lookups per step)
    step_gen = torch.Generator(device).manual_seed(cfg['seed'])         # t and ε; the same on every process
    return TrainState(net, weights, model, ema, optimizer, scheduler, loader, step_gen,
                      accelerator, provenance=ckpt.provenance(cfg))


def main():
    args, cfg = parse_args(get_parser())
    check_config(resolve_speed(cfg))
    tc, dc = cfg['train'], cfg['data']
    diffusion = from_config(cfg['diffusion'])
    accelerator, batch = make_accelerator(tc)
    rank, world = accelerator.process_index, accelerator.num_processes
    exp_dir, resume_dir = plan_run(args.exp_dir, cfg, accelerator)       # checks only; a resumed run is locked

    # ---------------------------------------------------------------- data, model, EMA, optimizer, resume
    set_seed(cfg['seed'])               # every process builds the same initial weights
    loader, n_images = make_loader(cfg, accelerator, batch)
    state = build_state(cfg, accelerator, loader)
    if rank:
        set_seed(cfg['seed'] + rank)    # the global RNGs (dropout) differ per process
    if resume_dir is not None:
        state.load(resume_dir, allow_change=tc['allow_config_change'])
        state.ema.decay = tc['ema_decay']     # the config's decay, even if the checkpoint was made with another
        if state.step > tc['n_steps']:
            raise UserError(f"train.n_steps {tc['n_steps']} is below the checkpoint's step {state.step}; "
                            f"pass a larger --train.n_steps to train on")
    fid_setup = prepare_fid(accelerator, cfg) if tc['fid_freq'] > 0 else None
    shape = (dc['img_channels'], dc['img_size'], dc['img_size'])
    grid_noise = torch.randn((tc['n_samples'], *shape), generator=torch.Generator().manual_seed(cfg['seed']))
    memory_format = torch.channels_last if tc['channels_last'] else torch.contiguous_format

    # ---------------------------------------------------------------- run folder, log (all checks passed)
    exp_dir = open_run(exp_dir, cfg, accelerator, fresh=resume_dir is None)
    ckpt_root = os.path.join(exp_dir, 'ckpt')
    log = Logger(exp_dir, enabled=accelerator.is_main_process)
    log.info(f'exp dir: {exp_dir}; {world} process(es) on {accelerator.device}, '
             f'mixed precision: {accelerator.mixed_precision}')
    log.info(f"data: {dc['name']} ({n_images} images), {'on the device' if dc['on_gpu'] else 'DataLoader'}; "
             f"batch {tc['batch_size']} = {world} x {batch}"
             + (f" in micro-batches of {tc['micro_batch']}" if 0 < tc['micro_batch'] < batch else ''))
    log.info(f'model: {sum(p.numel() for p in state.net.parameters()):,} parameters; speed: {speed_summary(cfg)}')
    for line in ([f'resumed from {resume_dir} at step {state.step}'] if resume_dir else []) + state.notes:
        log.info(line)
    stop = StopSignal(accelerator)

    # ---------------------------------------------------------------- train
    state.model.train()
    window = Window(accelerator, state.step, tc['batch_size'], ckpt_root)
    pbar = log.progress(total=tc['n_steps'], initial=state.step)
    stopping = False
    while state.step < tc['n_steps']:
        x = next(loader).contiguous(memory_format=memory_format)
        window.add(*train_step(state, diffusion, accelerator, x, tc['grad_clip'], tc['micro_batch']))
        step, last = state.step, state.step == tc['n_steps']
        pbar.update(1)
        if step % tc['print_freq'] == 0 or last:
            log.scalars(window.stats(step, state.scheduler.get_last_lr()[0]), step)
        stopping = stop.agreed(last)
        if step % tc['save_freq'] == 0 or last or stopping:
            window.check_finite(step)
            log.info(f'saved checkpoint {state.save(ckpt_root, tc["keep_ckpts"])}')
        if stopping:
            log.info(f'stopped by a signal at step {step}; resume with --train.resume latest -e {exp_dir}')
            break
        if tc['n_samples'] > 0 and (step % tc['sample_freq'] == 0 or last):
            sample_grid(accelerator, state.ema.model, diffusion, grid_noise, cfg['seed'],
                        os.path.join(exp_dir, 'samples', f'step{step:07d}.png'), log, step)
        if fid_setup is not None and step % tc['fid_freq'] == 0:
            log.info(f"FID: sampling {tc['fid_n_samples']} EMA images ({tc['fid_sampler']}, {tc['fid_steps']} "
                     f"{fid_setup['skip_type']} steps)")
            log.scalars({'fid': training_fid(accelerator, state.ema.model, cfg, fid_setup)}, step, prefix='eval')
    pbar.close()
    log.close()
    accelerator.end_training()
    if stopping:
        sys.exit(128 + stop.signum)


def make_accelerator(tc):
    """The Accelerator of the run and the per-process batch; one-line errors for settings it cannot run.

    cpu=True on a machine without CUDA lets `accelerate launch --multi_gpu --num_processes N` run N gloo processes.
    """
    mixed_precision = {False: 'no'}.get(tc['mixed_precision'], tc['mixed_precision'])  # YAML reads `no` as false
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    world = accelerator.num_processes
    if tc['bf16_weights'] and accelerator.mixed_precision != 'bf16':
        raise UserError(f"train.bf16_weights needs bf16 mixed precision, but this run has "
                        f"{accelerator.mixed_precision!r}; pass --train.mixed_precision bf16 (or accelerate launch "
                        f"--mixed_precision bf16), or --train.bf16_weights false")
    if tc['batch_size'] % world:
        raise UserError(f"train.batch_size {tc['batch_size']} does not divide over {world} processes; "
                        f"use a multiple of {world}")
    batch = tc['batch_size'] // world
    if batch % (tc['micro_batch'] or batch):
        raise UserError(f"train.micro_batch {tc['micro_batch']} does not divide the per-process batch {batch}")
    return accelerator, batch


def plan_run(exp_dir, cfg, accelerator):
    """(EXP_DIR or None for a default name, the checkpoint folder to resume from or None), checked before any
    work: a folder that cannot be written, a fresh run into a folder that holds checkpoints, a missing checkpoint.
    A resumed run's folder is locked here (before its checkpoint is read) and left as a killed save left it."""
    resume = cfg['train']['resume']
    if resume is not None and exp_dir is None and resume != 'latest':     # EXP_DIR/ckpt/stepN -> EXP_DIR
        exp_dir = os.path.dirname(os.path.dirname(os.path.abspath(resume)))
    if exp_dir is not None:
        check_writable(exp_dir, '-e', folder=True)
    if resume is None:
        if exp_dir is not None and os.path.isfile(os.path.join(exp_dir, 'ckpt', 'latest')):
            raise UserError(f"{exp_dir} already holds checkpoints; continue it with --train.resume latest, "
                            f"or pass another -e EXP_DIR")
        return exp_dir, None
    if resume == 'latest' and exp_dir is None:
        raise UserError("--train.resume latest needs the run's folder: pass -e EXP_DIR of the run to resume")
    if os.path.isdir(exp_dir):
        on_main_process(accelerator, lambda: (run_folder.acquire(exp_dir),
                                              ckpt.recover(os.path.join(exp_dir, 'ckpt'))))
    return exp_dir, ckpt.resolve(resume, exp_dir)


def open_run(exp_dir, cfg, accelerator, fresh) -> str:
    """Make the run folder (a new default one without -e) and its subfolders, lock it, write the resolved
    config.yaml (a resumed run keeps the one it started with); returns EXP_DIR, the same on every process."""
    def make():
        folder = exp_dir or run_folder.new_default_folder()
        if fresh:
            run_folder.acquire(folder)
            if os.path.isfile(os.path.join(folder, 'ckpt', 'latest')):       # written since plan_run looked
                raise UserError(f"{folder} already holds checkpoints; continue it with --train.resume latest")
            ckpt.recover(os.path.join(folder, 'ckpt'))
        for sub in ('ckpt', 'samples', 'tensorboard'):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
        if fresh or not os.path.isfile(os.path.join(folder, 'config.yaml')):
            save_config(cfg, os.path.join(folder, 'config.yaml'))
        return folder
    return on_main_process(accelerator, make)


def speed_summary(cfg) -> str:
    """The speed switches of the run, in a few words for the log."""
    tc = cfg['train']
    on = [name for name, key in (('data on the device', cfg['data']['on_gpu']), ('bf16 weight copy', tc['bf16_weights']),
                                 ('flat parameters', tc['flat_params']), ('channels_last', tc['channels_last']))
          if key]
    if tc['compile']:
        on.append(f"compiled ({tc['compile_mode']}{', tuned' if tc['compile_tuning'] else ''})")
    return ('train.fast; ' if tc['fast'] else '') + (', '.join(on) or 'plain (eager)')


class Window:
    """The loss and its finiteness, summed on the device between logging steps: no host sync per step."""

    def __init__(self, accelerator, step, batch_size, ckpt_root):
        self.accelerator, self.batch_size, self.ckpt_root = accelerator, batch_size, ckpt_root
        self.loss_sum = torch.zeros((), device=accelerator.device)
        self.nonfinite = torch.zeros((), device=accelerator.device)     # 1 once a loss or gradient norm was inf/nan
        self.t, self.step, self.grad_norm = time.time(), step, None

    def add(self, loss, grad_norm):
        self.loss_sum += loss
        finite = torch.isfinite(loss)
        if self.accelerator.scaler is None:          # fp16: the loss scaler skips steps with inf gradients by design
            finite = finite & torch.isfinite(grad_norm)
        self.nonfinite = torch.maximum(self.nonfinite, (~finite).float())
        self.grad_norm = grad_norm

    def check_finite(self, step):
        """Stop, before any save, if a loss or (without an fp16 loss scaler) a gradient norm was not finite."""
        if self.accelerator.reduce(self.nonfinite, 'max').item() > 0:
            raise UserError(f'the loss or the gradients became non-finite before step {step}; stopped without '
                            f'saving. The last good checkpoint in {self.ckpt_root} is untouched: lower train.lr or '
                            f'try train.mixed_precision no')

    def stats(self, step, lr) -> dict:
        """The window's mean loss (over processes), last gradient norm, lr and speed; starts the next window."""
        self.check_finite(step)
        dt, n = time.time() - self.t, step - self.step
        stats = {'loss': (self.accelerator.reduce(self.loss_sum, 'mean') / n).item(),
                 'grad_norm': float(self.grad_norm), 'lr': lr, 'steps_per_s': n / dt,
                 'images_per_s': n * self.batch_size / dt}
        if self.accelerator.device.type == 'cuda':
            stats['max_mem_gib'] = torch.cuda.max_memory_allocated(self.accelerator.device) / 2 ** 30
        self.loss_sum.zero_()
        self.t, self.step = time.time(), step
        return stats


class StopSignal:
    """Ctrl-C / SIGTERM: remembered by the handler, acted on between steps: the run saves a checkpoint and exits.

    With several processes a signal may reach only some of them, so every step each process adds its flag to a
    small all-reduce over a CPU (gloo) group, started without waiting and read one step later: all processes stop
    at the same step, one step after the signal, and no step waits on the device for it.
    """

    def __init__(self, accelerator):
        self.signum, self.world = None, accelerator.num_processes
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)
        if self.world > 1:
            self.group = torch.distributed.new_group(backend='gloo')
            self.flag, self.pending = torch.zeros(1), None

    def _handle(self, signum, frame):
        self.signum = signum

    def agreed(self, last) -> bool:
        """True at the step where every process stops (at the last step, the flags are waited for)."""
        if self.world == 1:
            return self.signum is not None
        stop = False
        if self.pending is not None:
            self.pending.wait()
            stop = self.flag.item() > 0
        self.flag.fill_(float(self.signum is not None))
        self.pending = torch.distributed.all_reduce(self.flag, torch.distributed.ReduceOp.MAX, group=self.group,
                                                    async_op=True)
        if stop or last:
            self.pending.wait()
            stop, self.pending = stop or self.flag.item() > 0, None
        if stop and self.signum is None:
            self.signum = signal.SIGTERM             # another process got it: exit as if this one had
        return stop


@torch.no_grad()
def sample_grid(accelerator, ema_model, diffusion, noise, seed, path, log, step):
    """Sample the fixed grid noise with the EMA model; save the grid (main process) and add it to TensorBoard.

    Every process runs the same small chain (it is a few seconds even for 64 images and 1000 steps on a GPU), so
    all stay in step and the grid is the same whatever the number of processes. The chain's noise comes from its
    own generator, so a grid never touches the training RNG state.
    """
    device = accelerator.device
    log.info(f'sampling the grid of {len(noise)} EMA images ({diffusion.num_steps} steps) -> {path}')
    bar = log.steps('grid', diffusion.num_steps)
    with accelerator.autocast():
        for x, _ in diffusion.sample_loop(ema_model, noise.to(device), torch.Generator(device).manual_seed(seed)):
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if accelerator.is_main_process:
        grid = images.grid(list(images.to_uint8(x)), nrow=int(math.sqrt(len(noise))) or 1)
        images.save_png(grid, path)
        log.image('samples/ema', grid, step)
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
    from utils.fid import cached_reference, check_weights, load_stats
    tc = cfg['train']
    try:
        skip_type = tc['fid_skip_type'] or default_skip_type(tc['fid_sampler'])
        diffusion = from_config(cfg['diffusion'], skip_type=skip_type, skip_steps=tc['fid_steps'])
        sampler = make_sampler(tc['fid_sampler'], diffusion)
    except UserError as e:
        raise UserError(f'train.fid_steps / fid_skip_type / fid_sampler: {e}') from None

    def reference():
        try:
            check_weights(tc['fid_weights'], flag='train.fid_weights')
        except UserError as e:
            raise UserError(f"train.fid_weights: {e}") from None
        if tc['fid_ref_stats'] is not None:
            return load_stats(tc['fid_ref_stats'])
        return cached_reference(cfg['data'], 'train', lambda: datasets.load_uint8(cfg['data'], 'train'),
                                weights_path=tc['fid_weights'], device=accelerator.device, verbose=True)['stats']
    return {'sampler': sampler, 'skip_type': skip_type, 'ref': on_main_process(accelerator, reference)}


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
        chunks.append(images.quantize_uint8(x))          # stays on the device for the gather
    samples = accelerator.gather(torch.cat(chunks))[:tc['fid_n_samples']]
    return on_main_process(accelerator, lambda: compute_fid(samples, setup['ref'], weights_path=tc['fid_weights'],
                                                            device=device, batch_size=250))


if __name__ == '__main__':
    run_main(main)
