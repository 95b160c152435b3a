"""Nothing lost, nothing silent: crafted pickles do not run, run folders have one owner, an interrupted save is
recovered, checkpoints and sample folders refuse other settings, and bad input is one line before any work."""
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from test_train import (ENV, ROOT, image_dir, load, one_line_error, start_training, tiny,  # noqa: F401 (image_dir)
                        train)
from utils import checkpoint as ckpt
from utils import run_folder
from utils.errors import UserError


class Payload:
    """Unpickled without restriction, it creates the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def load_config_with(overrides):
    from utils.config import apply_overrides, load_config
    return apply_overrides(load_config(os.path.join(ROOT, 'configs', 'ddpm_tiny.yaml')), overrides)


# --- code execution ------------------------------------------------------------------------------

@pytest.mark.slow
def test_crafted_inception_weights_are_refused_and_do_not_run(tmp_path, weights):
    from utils.fid import check_weights
    marker = tmp_path / 'ran'
    crafted = tmp_path / 'inception.pth'
    torch.save({'conv.weight': torch.zeros(1), 'x': Payload(marker)}, crafted)
    with pytest.raises(UserError, match='not a plain state_dict of tensors; refused'):
        check_weights(str(crafted))
    samples = tmp_path / 's.npz'
    np.savez(samples, np.zeros((4, 8, 8, 3), np.uint8))
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'evaluate_ddpm.py'), '--samples', str(samples), '--ref',
                        str(samples), '--feature-extractor-weights', str(crafted)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert 'refused' in one_line_error(p) and not marker.exists()
    check_weights(weights['random'])                  # a real state_dict of tensors passes


@pytest.mark.slow
def test_crafted_cifar_batch_is_refused_and_does_not_run(tmp_path, image_dir):
    from datasets import load_uint8
    marker = tmp_path / 'ran'
    folder = tmp_path / 'cifar' / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f'data_batch_{k}' for k in range(1, 6)] + ['test_batch']:
        with open(folder / name, 'wb') as f:
            pickle.dump({b'data': rng.integers(0, 256, (2, 3072), dtype=np.uint8), b'labels': [0, 1]}, f, protocol=2)
    assert load_uint8({'name': 'cifar10', 'root': str(tmp_path / 'cifar'), 'img_size': 32, 'img_channels': 3},
                      'test').shape == (2, 3, 32, 32)         # real-format batches still load
    with open(folder / 'data_batch_1', 'wb') as f:
        pickle.dump({b'data': Payload(marker)}, f)
    p = train(['-e', str(tmp_path / 'run'), *tiny(image_dir, **{'data.name': 'cifar10', 'data.img_channels': 3,
                                                                   'model.params.in_channels': 3,
                                                                   'model.params.out_channels': 3}),
               '--data.root', str(tmp_path / 'cifar')], check=False)
    assert 'refused to load posix.system' in one_line_error(p) and not marker.exists()
    assert not (tmp_path / 'run').exists()              # nothing made before the data was read


# --- work lost -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_folder_has_one_owner(tmp_path, image_dir, monkeypatch):
    """A second run into the folder of a live run is refused (it wrote nothing); the lock of a dead process is
    taken over; default folder names made in the same second differ."""
    exp = tmp_path / 'run'
    over = tiny(image_dir, **{'train.save_freq': 100000, 'train.print_freq': 100000})
    first = start_training(exp, over)
    assert (exp / '.lock').exists()
    config = (exp / 'config.yaml').read_text()
    second = train(['-e', str(exp), '--train.n_steps', '2', *over, '--train.lr', '0.5'], check=False)
    assert 'is in use by another run' in one_line_error(second)
    assert (exp / 'config.yaml').read_text() == config
    first.terminate()
    first.communicate(timeout=120)
    assert not (exp / '.lock').exists()
    (exp / '.lock').write_text(f'999999999@{socket.gethostname()}\n')      # a process that is gone
    step = load(exp / 'ckpt' / open(exp / 'ckpt' / 'latest').read().strip(), 'meta.pt')['step']
    train(['-e', str(exp), '--train.n_steps', str(step + 2), '--train.resume', 'latest', *over])
    monkeypatch.chdir(tmp_path)
    names = {run_folder.new_default_folder('runs') for _ in range(3)}
    assert len(names) == 3 and all(os.path.isdir(n) for n in names)


@pytest.mark.slow
def test_kill_while_resaving_a_step_then_resume_latest_works(tmp_path, image_dir, monkeypatch):
    """Every moment of publish() is crash-safe: killed after the old step folder was moved aside and before the
    new one is in place, recover() (run by the next owner) puts the old one back; leftovers are removed."""
    exp = tmp_path / 'run'
    over = tiny(image_dir)
    train(['-e', str(exp), '--train.n_steps', '2', *over])
    root = str(exp / 'ckpt')
    before = load(exp / 'ckpt' / 'step0000002', 'model.pt')
    tmp = ckpt.tmp_dir_for(root, 2)
    os.makedirs(tmp)
    for name in os.listdir(os.path.join(root, 'step0000002')):
        open(os.path.join(tmp, name), 'wb').write(b'new and unfinished')
    real_replace, calls = os.replace, []

    def killed_between(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt                 # the process dies between the two renames
        return real_replace(src, dst)
    monkeypatch.setattr(os, 'replace', killed_between)
    with pytest.raises(KeyboardInterrupt):
        ckpt.publish(root, 2, keep=3)
    monkeypatch.setattr(os, 'replace', real_replace)
    assert not os.path.exists(os.path.join(root, 'step0000002'))       # `latest` names a missing folder now
    open(os.path.join(root, '.latest.12345.tmp'), 'w').write('cut short')
    p = train(['-e', str(exp), '--train.n_steps', '4', '--train.resume', 'latest', *over])
    assert 'resumed from' in p.stdout and 'step0000002' in p.stdout
    assert sorted(n for n in os.listdir(root) if not n.startswith('step')) == ['latest']
    for k, v in before.items():
        assert torch.equal(load(exp / 'ckpt' / 'step0000002', 'model.pt')[k], v)


# --- accepted silently -----------------------------------------------------------------------------

@pytest.mark.slow
def test_checkpoint_records_what_made_it_and_refuses_other_settings(tmp_path, image_dir):
    exp = tmp_path / 'run'
    over = tiny(image_dir)
    train(['-e', str(exp), '--train.n_steps', '2', *over])
    made = load(exp / 'ckpt' / 'step0000002', 'meta.pt')['provenance']
    assert made['diffusion']['total_steps'] == 10 and made['model.params']['dim'] == 16 and made['data']['img_size'] == 8
    resume = ['-e', str(exp), '--train.n_steps', '4', '--train.resume', 'latest', *over]
    msg = one_line_error(train([*resume, '--diffusion.total_steps', '20'], check=False))
    assert 'was made with diffusion.total_steps = 10, this config has 20' in msg
    assert '--train.allow_config_change true' in msg
    current = ckpt.provenance(load_config_with(over))
    for key, value in (('diffusion', {'beta_schedule': 'cosine'}), ('diffusion', {'objective': 'pred_v'}),
                       ('model.params', {'dim_mults': [1, 1]}), ('data', {'img_size': 16})):
        changed = {s: dict(v, **(value if s == key else {})) for s, v in current.items()}
        with pytest.raises(UserError, match=f'was made with {key}.{next(iter(value))} = '):
            ckpt.check_provenance(made, changed, 'checkpoint X', False, '--train.allow_config_change true')
    assert ckpt.check_provenance(made, current, 'checkpoint X', False, '--flag') == []
    assert 'records no config' in ckpt.check_provenance(None, current, 'checkpoint X', False, '--flag')[0]
    p = train([*resume, '--diffusion.objective', 'pred_v', '--train.allow_config_change', 'true'])
    assert "diffusion.objective was 'pred_eps'" in p.stdout
    msg = one_line_error(train(['-e', str(exp), '--train.n_steps', '2', '--train.resume', 'latest', *over,
                                '--diffusion.objective', 'pred_v'], check=False))
    assert 'train.n_steps 2 is below the checkpoint\'s step 4' in msg
    # sampling checks the same record
    sample = [sys.executable, os.path.join(ROOT, 'sample_ddpm.py'), '-c', os.path.join(ROOT, 'configs/ddpm_tiny.yaml'),
              '--weights', str(exp / 'ckpt' / 'step0000004'), '--n_samples', '2', '--save_dir', str(tmp_path / 's'),
              *over]
    p = subprocess.run(sample + ['--diffusion.total_steps', '20'], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert 'was made with diffusion.objective' in one_line_error(p) or 'was made with diffusion.total_steps' in \
        one_line_error(p)
    assert not (tmp_path / 's').exists()
    p = subprocess.run(sample + ['--diffusion.objective', 'pred_v'], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


@pytest.mark.slow
def test_sample_folder_refuses_other_size_precision_or_weights(tmp_path):
    from test_sample_cli import CONFIG, TINY, random_unet, tiny_cfg
    d = tmp_path / 'ck'
    d.mkdir()
    torch.save(random_unet(tiny_cfg(), 0).state_dict(), d / 'ema.pt')
    out = tmp_path / 'out'
    cmd = [sys.executable, os.path.join(ROOT, 'sample_ddpm.py'), '-c', CONFIG, '--weights', str(d / 'ema.pt'),
           '--n_samples', '2', '--micro_batch', '2', '--save_dir', str(out), '--sampler', 'ddim', '--skip_steps', '2',
           *TINY]
    run = lambda *extra: subprocess.run(cmd + list(extra), cwd=ROOT, env=ENV, capture_output=True, text=True,
                                        timeout=120)
    assert run().returncode == 0
    assert 'img_size = 8, not 16' in one_line_error(run('--data.img_size', '16'))
    p = subprocess.run(['accelerate', 'launch', '--num_processes', '1', '--mixed_precision', 'bf16', *cmd[1:]],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert "precision = 'no', not 'bf16'" in p.stderr
    torch.save(random_unet(tiny_cfg(), 1).state_dict(), d / 'ema.pt')          # other weights, same path
    assert 'weights_sha256' in one_line_error(run())
    assert sorted(os.listdir(out)) == ['000000.png', '000001.png', 'sample_args.yaml']


# --- one line, before any work ---------------------------------------------------------------------

@pytest.mark.parametrize('override, expect', [
    (('--train.print_freq', '0'), 'train.print_freq must be at least 1'),
    (('--train.mixed_precision', 'bf17'), 'train.mixed_precision must be null, no, fp16 or bf16'),
    (('--train.lr', '-1'), 'train.lr must be positive'),
    (('--data.img_size', '9'), 'data.img_size 9 must be divisible by 2'),
    (('--train.batch_size', '64', '--data.on_gpu', 'false'), 'the dataset has 48 images, fewer than one batch'),
    (('--diffusion.beta_start', '0.3'), 'diffusion.beta_start 0.3 is above beta_end 0.2'),
    (('--diffusion.beta_end', '1.5'), 'diffusion.beta_end must be a number in (0, 1), got 1.5'),
    (('--train.ema_decay', '2.0'), 'train.ema_decay must be in [0, 1]'),
    (('--train.adam_betas', '[0.9]'), 'train.adam_betas must be two numbers in [0, 1)'),
    (('--train.adam_betas', '[0.9, 1.5]'), 'train.adam_betas must be two numbers in [0, 1)'),
    (('--train.weight_decay', '-1.0'), 'train.weight_decay must be at least 0'),
    (('--data.num_workers', '-1'), 'data.num_workers must be at least 0'),
    (('--train.n_samples', '-1'), 'train.n_samples must be at least 0'),
    (('--train.compile_mode', 'turbo'), 'train.compile_mode must be one of'),
    (('--train.learning_rate', '1e-4'), "unknown config key 'train.learning_rate'; closest valid keys: train.lr"),
    (('--data.root', '/nonexistent/imgs'), 'no images'),
])
def test_bad_values_are_one_line_and_leave_no_folder(tmp_path, image_dir, override, expect, capsys, monkeypatch):
    exp = tmp_path / 'run'
    assert expect in train_in_process(['-e', str(exp), '--train.n_steps', '2', *tiny(image_dir), *override],
                                      capsys, monkeypatch)
    assert not exp.exists()


def train_in_process(args, capsys, monkeypatch) -> str:
    """train_ddpm.py's command line run in this process (for errors raised before training starts): its one
    stderr line."""
    import train_ddpm
    from accelerate.state import AcceleratorState
    from utils.errors import run_main
    monkeypatch.setattr(sys, 'argv', ['train_ddpm.py', '-c', os.path.join(ROOT, 'configs/ddpm_tiny.yaml'), *args])
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as e:
            run_main(train_ddpm.main)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith('error: '), err
    return err[0]


def test_bad_run_folders_are_one_line(tmp_path, image_dir, capsys, monkeypatch):
    a_file = tmp_path / 'a_file'
    a_file.write_text('keep me')
    assert 'is a file, not a folder' in train_in_process(['-e', str(a_file), *tiny(image_dir)], capsys, monkeypatch)
    assert 'is a file, so nothing can be made under it' in train_in_process(['-e', str(a_file / 'run'),
                                                                            *tiny(image_dir)], capsys, monkeypatch)
    assert a_file.read_text() == 'keep me'


@pytest.mark.slow
def test_resume_with_an_ema_of_another_shape_is_one_line(tmp_path, image_dir):
    exp = tmp_path / 'run'
    train(['-e', str(exp), '--train.n_steps', '2', *tiny(image_dir)])
    path = exp / 'ckpt' / 'step0000002' / 'ema.pt'
    ema = torch.load(path, weights_only=True)
    ema['model']['conv_in.weight'] = torch.zeros(8, 1, 3, 3)                   # another network's
    torch.save(ema, path)
    msg = one_line_error(train(['-e', str(exp), '--train.n_steps', '4', '--train.resume', 'latest', *tiny(image_dir)],
                               check=False))
    assert 'the EMA weights in' in msg and 'do not fit this model' in msg


@pytest.mark.slow
def test_corrupt_image_read_by_a_dataloader_worker_is_one_line(tmp_path, image_dir):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for name in os.listdir(image_dir):
        (folder / name).write_bytes((open(os.path.join(image_dir, name), 'rb')).read())
    png = (folder / '005.png').read_bytes()
    (folder / '005.png').write_bytes(png[:60])                    # a valid header, then nothing
    msg = one_line_error(train(['-e', str(tmp_path / 'run'), '--train.n_steps', '8',
                                *tiny(str(folder), **{'data.on_gpu': 'false', 'data.num_workers': 1})],
                               check=False))
    assert msg.startswith("error: cannot read image '") and '005.png' in msg


def test_evaluate_bad_input_is_one_line_before_any_work(tmp_path, weights, capsys, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from test_evaluate import one_line_error as evaluate_error
    monkeypatch.setattr(FeatureExtractorInceptionV3, 'INPUT_IMAGE_SIZE', 75)       # its smallest: same code path
    good = tmp_path / 'good.npz'
    np.savez(good, np.zeros((4, 8, 8, 3), np.uint8))
    bad_npz = tmp_path / 'bad.npz'
    bad_npz.write_bytes(good.read_bytes()[:100])
    folder = tmp_path / 'pngs'
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f'{i:06d}.png')
    (folder / '000001.png').write_bytes((folder / '000001.png').read_bytes()[:50])
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    w = ['--feature-extractor-weights', weights['random'], '--dims', '64']
    cases = [
        (['--samples', bad_npz, '--ref', good, *w], 'neither a folder of images nor a readable'),
        (['--samples', good, '--ref-stats', bad_npz, *w], 'is not a readable .npz'),
        (['--samples', good, '--ref', good, '--isc', '--isc-splits', '0', *w], '--isc-splits must be at least 1'),
        (['--samples', good, '--ref', good, '--kid', '--kid-subset-size', '0', *w], '--kid-subset-size must be at'),
        (['--samples', good, '--ref', good, '--batch-size', '0', *w], '--batch-size must be at least 1'),
        (['--samples', good, '--ref', good, '--out', a_file / 'r.json', *w], 'so nothing can be made under it'),
        (['--samples', good, '--ref', good, '--save-ref-stats', a_file / 's.npz', *w], 'so nothing can be made'),
        (['--samples', folder, '--ref', good, *w], "cannot read image '"),
    ]
    for args, expect in cases:
        assert expect in evaluate_error(capsys, *args), args
