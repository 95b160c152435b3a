"""Checkpoints: atomic folders `EXP_DIR/ckpt/stepNNNNNNN/`, a `latest` pointer, safe loading.

A checkpoint folder holds
    model.pt       raw model state_dict (float32)
    ema.pt         {'model': EMA state_dict, 'num_updates': int, 'decay': float}
    optimizer.pt   optimizer state_dict
    meta.pt        {'step': int, 'lr_scheduler': ..., 'scaler': ... or None}
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


def step_dir_name(step: int) -> str:
    return f'step{step:07d}'


def tmp_dir_for(ckpt_root: str, step: int) -> str:
    return os.path.join(ckpt_root, f'.tmp-{step_dir_name(step)}')


def save_file(obj, path: str):
    """torch.save, atomically: `path` is either the old or the new file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def publish(ckpt_root: str, step: int, keep: int):
    """Move the finished temporary folder of `step` into place, point `latest` at it, keep the newest `keep`.

    Only checkpoints older than `step` are pruned: newer ones (left by a run resumed from an older step) are
    never deleted, and neither is the one just written. Replacing an existing folder of the same step moves
    the old one aside first, so the step's folder is always complete.
    """
    final = os.path.join(ckpt_root, step_dir_name(step))
    old = None
    if os.path.exists(final):
        old = final + f'.old-{os.getpid()}'
        os.replace(final, old)
    os.replace(tmp_dir_for(ckpt_root, step), final)
    atomic_write(os.path.join(ckpt_root, 'latest'), lambda f: f.write(step_dir_name(step) + '\n'), mode='w')
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    older = sorted(int(m.group(1)) for d in os.listdir(ckpt_root) if (m := STEP_DIR.match(d)) and int(m.group(1)) < step)
    for s in older[:max(len(older) - (keep - 1), 0)] if keep > 0 else []:
        shutil.rmtree(os.path.join(ckpt_root, step_dir_name(s)), ignore_errors=True)


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
    """torch.load with weights_only=True; a missing or corrupt file is a one-line UserError."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file {path} does not exist")
    try:
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


def load_model_weights(path: str, use_ema: bool = True) -> dict:
    """The model state_dict in a checkpoint folder (EMA or raw) or in a single weights file."""
    if os.path.isdir(path):
        name = 'ema.pt' if use_ema else 'model.pt'
        sd = load_file(os.path.join(path, name))
    elif os.path.isfile(path):
        sd = load_file(path)
    else:
        raise UserError(f"weights {path} not found: pass a checkpoint folder EXP_DIR/ckpt/stepNNNNNNN or its model file")
    if isinstance(sd, dict) and 'model' in sd and 'num_updates' in sd:  # an ema.pt
        sd = sd['model']
    if not isinstance(sd, dict):
        raise UserError(f"weights {path} hold no state_dict")
    return sd
