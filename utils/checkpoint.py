"""Checkpoints: atomic folders `EXP_DIR/ckpt/stepNNNNNNN/`, a `latest` pointer, safe loading.

A checkpoint folder holds
    model.pt       raw model state_dict (float32)
    ema.pt         {'model': EMA state_dict, 'num_updates': int, 'decay': float}
    optimizer.pt   optimizer state_dict
    meta.pt        {'step': int, 'lr_scheduler': ..., 'scaler': ... or None, 'provenance': what made it (see
                   check_provenance; absent in checkpoints of older versions)}
    rng_{rank}.pt  every RNG state of process `rank` (CPU, CUDA, data order, flips)
It is written into a temporary folder and renamed into place, so a killed run never leaves a partial one.
What goes into the files: utils.train_state.TrainState.
"""
import os
import re
import shutil
from typing import Optional

import torch

from .errors import UserError
from .files import atomic_write

STEP_DIR = re.compile(r'^step(\d{7,})$')
OLD_DIR = re.compile(r'^(step\d{7,})\.old-\d+$')


def step_dir_name(step: int) -> str:
    return f'step{step:07d}'


def tmp_dir_for(ckpt_root: str, step: int) -> str:
    return os.path.join(ckpt_root, f'.tmp-{step_dir_name(step)}')


def save_file(obj, path: str):
    """torch.save, atomically: `path` is either the old or the new file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def fsync_dir(path: str):
    """Flush a folder's entries (renames, new files) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(ckpt_root: str, step: int, keep: int):
    """Move the finished temporary folder of `step` into place, point `latest` at it, keep the newest `keep`.

    Only checkpoints older than `step` are pruned: newer ones (left by a run resumed from an older step) are
    never deleted, and neither is the one just written. Replacing an existing folder of the same step moves the
    old one aside first (stepN.old-PID); if the process dies before the new one is in place, `recover` puts the
    old one back, so `latest` always names a complete folder. Files and folder entries are on the disk before
    `latest` moves (a power loss, not only a killed process, leaves the old or the new checkpoint).
    """
    tmp, final = tmp_dir_for(ckpt_root, step), os.path.join(ckpt_root, step_dir_name(step))
    fsync_dir(tmp)
    old = None
    if os.path.exists(final):
        old = final + f'.old-{os.getpid()}'
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(ckpt_root)
    atomic_write(os.path.join(ckpt_root, 'latest'), lambda f: f.write(step_dir_name(step) + '\n'), mode='w')
    fsync_dir(ckpt_root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    older = sorted(int(m.group(1)) for d in os.listdir(ckpt_root) if (m := STEP_DIR.match(d)) and int(m.group(1)) < step)
    for s in older[:max(len(older) - (keep - 1), 0)] if keep > 0 else []:
        shutil.rmtree(os.path.join(ckpt_root, step_dir_name(s)), ignore_errors=True)


def recover(ckpt_root: str):
    """Undo what a killed save left (call it as the run folder's owner, before reading `latest`): a step folder
    moved aside by an interrupted `publish` goes back in place; unfinished temporary folders and files go."""
    if not os.path.isdir(ckpt_root):
        return
    for name in os.listdir(ckpt_root):
        path = os.path.join(ckpt_root, name)
        moved = OLD_DIR.match(name)
        if moved and not os.path.exists(os.path.join(ckpt_root, moved.group(1))):
            os.replace(path, os.path.join(ckpt_root, moved.group(1)))
        elif moved or name.startswith('.tmp-'):
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith('.') and name.endswith('.tmp'):          # an atomic_write cut short
            os.remove(path)


def resolve(resume: str, exp_dir: Optional[str]) -> str:
    """The checkpoint folder that `--train.resume` names: 'latest' (in EXP_DIR/ckpt) or a folder path."""
    if resume == 'latest':
        if exp_dir is None:
            raise UserError("--train.resume latest needs the run's folder: pass -e EXP_DIR of the run to resume")
        pointer = os.path.join(exp_dir, 'ckpt', 'latest')
        if not os.path.isfile(pointer):
            raise UserError(f"--train.resume latest: no checkpoint found ({pointer} does not exist); "
                            f"check -e EXP_DIR or start without --train.resume")
        with open(pointer) as f:
            return os.path.join(exp_dir, 'ckpt', f.read().strip())
    if not os.path.isdir(resume):
        raise UserError(f"--train.resume {resume}: not a checkpoint folder (expected EXP_DIR/ckpt/stepNNNNNNN/)")
    return resume


def load_file(path: str):
    """torch.load with weights_only=True, or safetensors' reader for a `.safetensors` file (which torch.load reads
    only from torch 2.12 on); a missing or corrupt file is a one-line UserError."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file {path} does not exist")
    try:
        if str(path).endswith('.safetensors'):
            from safetensors.torch import load_file as load_safetensors
            return load_safetensors(path, device='cpu')
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # truncated zip, wrong format, pickled code...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint file {path} is corrupt or not a PyTorch checkpoint ({msg}); "
                        f"use another checkpoint folder") from None


def load_state_dict_checked(module: torch.nn.Module, state_dict: dict, source: str):
    """load_state_dict that reports a mismatch as one line: which key, both shapes, and what to check."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise UserError(f"{source} does not fit the model of this config: "
                        f"{len(missing)} missing keys (e.g. {missing[:1]}) and {len(unexpected)} unexpected "
                        f"(e.g. {unexpected[:1]}); use the config the checkpoint was trained with")
    for k, v in own.items():
        if v.shape != state_dict[k].shape:
            raise UserError(f"{source} does not fit the model of this config: '{k}' has shape "
                            f"{tuple(state_dict[k].shape)} in the checkpoint but {tuple(v.shape)} in the model; "
                            f"use the config the checkpoint was trained with")
    module.load_state_dict(state_dict)


def weights_file(path: str, use_ema: bool = True) -> str:
    """The file holding the weights that `path` names: a checkpoint folder's ema.pt (or model.pt), or the file."""
    if os.path.isdir(path):
        return os.path.join(path, 'ema.pt' if use_ema else 'model.pt')
    if os.path.isfile(path):
        return path
    raise UserError(f"weights {path} not found: pass a checkpoint folder EXP_DIR/ckpt/stepNNNNNNN or its model file")


def load_model_weights(path: str, use_ema: bool = True) -> dict:
    """The model state_dict in a checkpoint folder (EMA or raw) or in a single weights file."""
    sd = load_file(weights_file(path, use_ema))
    if isinstance(sd, dict) and 'model' in sd and 'num_updates' in sd:  # an ema.pt
        sd = sd['model']
    if not isinstance(sd, dict):
        raise UserError(f"weights {path} hold no state_dict")
    return sd


def provenance(cfg) -> dict:
    """What a checkpoint must agree with to be resumed or sampled: the network's shape, the diffusion's chain
    and objective, the images' shape (saved in meta.pt, checked by check_provenance)."""
    mp, dc, df = cfg['model']['params'], cfg['data'], cfg['diffusion']
    return {'model.params': {k: v for k, v in mp.items() if k != 'dropout'},
            'diffusion': {k: df[k] for k in ('total_steps', 'beta_schedule', 'beta_start', 'beta_end', 'objective')},
            'data': {'img_size': dc['img_size'], 'img_channels': dc['img_channels']}}


def check_provenance(saved, current: dict, source: str, allow: bool, flag: str) -> list:
    """Compare what made a checkpoint (`saved`, from its meta.pt; None for older checkpoints) with the current
    config's {section: {key: value}}. A difference is a one-line UserError naming the first one, unless `allow`
    (the `flag` that allows it); returns the log lines to write about what was not checked or was allowed."""
    if saved is None:
        return [f'{source} records no config (an older checkpoint): its chain and image size were not checked']
    diffs = [(f'{section}.{key}', saved.get(section, {}).get(key), value)
             for section, values in current.items() for key, value in values.items()
             if key in saved.get(section, {}) and saved[section][key] != value]
    if diffs and not allow:
        key, old, new = diffs[0]
        raise UserError(f"{source} was made with {key} = {old!r}, this config has {new!r}"
                        f"{f' (and {len(diffs) - 1} more difference(s))' if len(diffs) > 1 else ''}; use the config "
                        f"it was made with (its run folder's config.yaml), or pass {flag} to change it on purpose")
    return [f'{flag}: {key} was {old!r} in {source}, now {new!r}' for key, old, new in diffs]
