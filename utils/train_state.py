"""The training step and the one object that owns what training changes, with its checkpoint.

    state = TrainState(net, weights, model, ema, optimizer, scheduler, loader, step_gen)   # train_ddpm.build_state
    loss, grad_norm = train_step(state, diffusion, accelerator, next(loader), grad_clip=1.0)
    state.save(ckpt_root, keep=3, accelerator)  /  state.load(folder)

Nothing here imports the model, the diffusion or the data code: they are handed in.
"""
import contextlib
import os

import torch

from . import checkpoint as ckpt
from .errors import UserError


class TrainState:
    """Everything a training run changes, and its checkpoint.

    net         the fp32 network: what the optimizer updates and model.pt holds
    weights     models.fast.FastWeights over net (a pass-through on the reference path): the tensors the optimizer
                holds (`weights.params`) and the hooks around its step
    model       what the step calls: net, or its bf16 copy; compiled and/or DDP-wrapped
    ema         models.EMA of net
    optimizer, scheduler, loader (batches; its state is the data order), step_gen (t and ε), step
    """

    def __init__(self, net, weights, model, ema, optimizer, scheduler, loader, step_gen, accelerator, step=0,
                 provenance=None):
        self.net, self.weights, self.model, self.ema = net, weights, model, ema
        self.optimizer, self.scheduler, self.loader, self.step_gen = optimizer, scheduler, loader, step_gen
        self.accelerator, self.step = accelerator, step
        self.provenance = provenance or {}    # {section: {key: value}} of the config that a checkpoint must match
        self.notes = []                       # what the last load wants logged

    def state_dict(self) -> dict:
        """{file name: contents} of a checkpoint folder, as this process writes it: model.pt, ema.pt, optimizer.pt
        (per parameter, whatever the speed layer's layout), meta.pt, and rng_{rank}.pt (this process's RNGs)."""
        scaler = self.accelerator.scaler
        return {
            'model.pt': self.net.state_dict(),
            'ema.pt': self.ema.state_dict(),
            'optimizer.pt': self.weights.optimizer_state_to_params(self.optimizer.state_dict()),
            'meta.pt': {'step': self.step, 'lr_scheduler': self.scheduler.state_dict(),
                        'scaler': scaler.state_dict() if scaler is not None else None, 'provenance': self.provenance},
            f'rng_{self.accelerator.process_index}.pt': {
                'cpu': torch.get_rng_state(),
                'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                'step_gen': self.step_gen.get_state(),
                'loader': self.loader.state_dict()},
        }

    def load_state_dict(self, files: dict, source: str, allow_change: bool = False):
        """Restore from {file name: contents} of a checkpoint folder (`source` names it in errors).

        The checkpoint must have been made with this config's network shape, chain and image size
        (`self.provenance`), unless `allow_change`. The data order, flips, t and ε are drawn the same on every
        process, so they come from process 0's file: a run may resume on another number of processes (same
        global batch) and see the same global batches. Each process's global RNGs (dropout) come from its own
        file, if the saved run had that process.
        """
        meta = files['meta.pt']
        if not isinstance(meta, dict) or 'step' not in meta:
            raise UserError(f"checkpoint {source}/meta.pt is not a training checkpoint's meta file; use another "
                            f"checkpoint folder")
        self.notes = ckpt.check_provenance(meta.get('provenance'), self.provenance, f'checkpoint {source}',
                                           allow_change, '--train.allow_config_change true')
        ckpt.load_state_dict_checked(self.net, files['model.pt'], f'checkpoint {source}')
        try:
            self.ema.load_state_dict(files['ema.pt'])
        except (RuntimeError, KeyError) as e:
            raise UserError(f"the EMA weights in {source} do not fit this model ({' '.join(str(e).split())[:200]}); "
                            f"resume from a checkpoint of this config") from None
        try:
            self.optimizer.load_state_dict(self.weights.optimizer_state_from_params(files['optimizer.pt']))
        except (ValueError, KeyError) as e:
            raise UserError(f"the optimizer state in {source} does not fit this model ({e}); resume from a "
                            f"checkpoint of this config, or start a new run") from None
        self.weights.refresh()
        self.scheduler.load_state_dict(meta['lr_scheduler'])
        if self.accelerator.scaler is not None and meta['scaler'] is not None:
            self.accelerator.scaler.load_state_dict(meta['scaler'])
        shared = files['rng_0.pt']
        try:
            self.loader.load_state_dict(shared['loader'])
            self.step_gen.set_state(shared['step_gen'])
        except (RuntimeError, KeyError) as e:
            raise UserError(f"the random state in {source} does not fit this device ({type(e).__name__}): resume on "
                            f"the kind of device it was saved on (CPU or GPU), or start a new run") from None
        own = files.get(f'rng_{self.accelerator.process_index}.pt')
        if own is not None:
            torch.set_rng_state(own['cpu'])
            if own['cuda'] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(own['cuda'])
        self.step = int(meta['step'])

    def save(self, ckpt_root: str, keep: int):
        """Write the checkpoint of the current step into ckpt_root/stepNNNNNNN (atomically, every process its part)
        and point ckpt_root/latest at it, keeping the newest `keep`. Returns the folder."""
        acc = self.accelerator
        tmp = ckpt.tmp_dir_for(ckpt_root, self.step)
        if acc.is_main_process:
            os.makedirs(tmp, exist_ok=True)
        acc.wait_for_everyone()
        own = f'rng_{acc.process_index}.pt'
        for name, obj in self.state_dict().items():
            if acc.is_main_process or name == own:
                ckpt.save_file(obj, os.path.join(tmp, name))
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.publish(ckpt_root, self.step, keep)
        acc.wait_for_everyone()
        return os.path.join(ckpt_root, ckpt.step_dir_name(self.step))

    def load(self, folder: str, allow_change: bool = False):
        """Restore the checkpoint in `folder` (EXP_DIR/ckpt/stepNNNNNNN); see load_state_dict."""
        names = ['model.pt', 'ema.pt', 'optimizer.pt', 'meta.pt', 'rng_0.pt']
        files = {name: ckpt.load_file(os.path.join(folder, name)) for name in names}
        own = f'rng_{self.accelerator.process_index}.pt'
        if own not in files and os.path.isfile(os.path.join(folder, own)):
            files[own] = ckpt.load_file(os.path.join(folder, own))
        self.load_state_dict(files, folder, allow_change)


def train_step(state: TrainState, diffusion, accelerator, x, grad_clip: float, micro_batch: int = 0):
    """One optimizer step of the paper's training (Ho et al. 2020, Algorithm 1) on this process's batch.

    x: (B, C, H, W) in [-1, 1], this process's share of the global batch. t ~ Uniform{0, ..., T-1} and ε ~ N(0, I)
    are drawn for the whole global batch from `state.step_gen` (the same on every process) and each process takes
    its slice, so neither the number of processes nor `micro_batch` (gradient accumulation over pieces of that
    size) changes what is drawn. The loss is diffusion.training_loss (the simple loss, eq. 14), under the
    accelerator's autocast. Returns (loss, grad_norm), 0-d tensors on the device: the mean loss over x and the
    gradient norm before clipping; reading them synchronises with the device, so the caller does that rarely.
    """
    rank, world, B = accelerator.process_index, accelerator.num_processes, x.shape[0]
    mine = slice(rank * B, (rank + 1) * B)
    t = torch.randint(0, diffusion.num_steps, (B * world,), device=x.device, generator=state.step_gen)[mine]
    noise = torch.randn((B * world, *x.shape[1:]), device=x.device, generator=state.step_gen)[mine]
    if not x.is_contiguous():                # channels_last data (train.channels_last): noise laid out alike
        noise = noise.contiguous(memory_format=torch.channels_last)
    micro = micro_batch or B
    n_micro, loss_sum = B // micro, None
    for k in range(n_micro):
        part = slice(k * micro, (k + 1) * micro)
        sync = accelerator.no_sync(state.model) if k < n_micro - 1 else contextlib.nullcontext()  # DDP: last only
        with sync, accelerator.autocast():
            loss = diffusion.training_loss(state.model, x[part], t[part], noise[part]) / n_micro
        accelerator.backward(loss)
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    state.weights.grads_to_params()          # speed layer: bf16 / flat gradients -> the optimizer's (no-op otherwise)
    grad_norm = accelerator.clip_grad_norm_(state.weights.params, grad_clip)
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.weights.refresh()                  # speed layer: the bf16 copy follows the fp32 weights (no-op otherwise)
    state.ema.update()
    state.step += 1
    return loss_sum, grad_norm
