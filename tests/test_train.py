"""train_ddpm.py through its real command line: end to end, exact resume, 2 processes, errors."""
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES='', PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory):
    """48 small grayscale PNGs (random blobs) as an image_folder dataset."""
    d = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    for k in range(48):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(d / f'{k:03d}.png')
    return str(d)


def tiny(image_dir, **over):
    """Overrides turning the quick-start config into a seconds-long run on `image_dir`."""
    args = {'data.name': 'image_folder', 'data.root': image_dir, 'data.img_size': 8, 'data.random_flip': 'true',
            'data.num_workers': 0, 'model.params.dim': 16, 'diffusion.total_steps': 10, 'train.batch_size': 8,
            'train.n_samples': 4, 'train.print_freq': 2, 'train.sample_freq': 100, 'train.save_freq': 2,
            'train.warmup_steps': 2, 'train.keep_ckpts': 10}
    args.update(over)
    return [x for k, v in args.items() for x in (f'--{k}', str(v))]


def train(args, launcher=(sys.executable,), check=True, **kw):
    p = subprocess.run([*launcher, os.path.join(ROOT, 'train_ddpm.py'), '-c', os.path.join(ROOT, 'configs/ddpm_tiny.yaml'), *args],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f'exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}')
    return p


def load(folder, name):
    return torch.load(os.path.join(folder, name), map_location='cpu', weights_only=True)


def assert_same_tree(a, b, path=''):
    """Bit-identical nested state (dicts, lists, tensors, numbers)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_tree(a[k], b[k], f'{path}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f'{path}[{k}]')
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f'{path} differs'
    else:
        assert a == b, path


@pytest.mark.slow
def test_quickstart_config_end_to_end(tmp_path):
    """The README's quick-start config on the real Fashion-MNIST files: checkpoint, sample grid, TensorBoard.
    (20 steps of batch 16 and a grid of 16: the config's batch and 64-image grid would take 35 s more here.)"""
    exp = tmp_path / 'run'
    p = train(['-e', str(exp), '--train.n_steps', '20', '--train.save_freq', '20', '--train.sample_freq', '20',
               '--train.print_freq', '10', '--train.batch_size', '16', '--train.n_samples', '16'])
    assert 'step 20: loss' in p.stdout
    assert (exp / 'config.yaml').is_file() and (exp / 'output.log').is_file()
    assert open(exp / 'ckpt' / 'latest').read().strip() == 'step0000020'
    assert {f for f in os.listdir(exp / 'ckpt' / 'step0000020')} == {'model.pt', 'ema.pt', 'optimizer.pt', 'meta.pt', 'rng_0.pt'}
    grid = Image.open(exp / 'samples' / 'step0000020.png')
    assert grid.size[0] > 16 * 4                      # 16 images of 16x16 in a 4x4 grid with padding
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(exp / 'tensorboard'))
    events.Reload()
    assert 'train/loss' in events.Tags()['scalars'] and 'samples/ema' in events.Tags()['images']
    (image,) = events.Images('samples/ema')
    assert image.step == 20 and (image.width, image.height) == grid.size
    assert 'sampling the grid of 16 EMA images (100 steps)' in p.stdout
    assert load(exp / 'ckpt' / 'step0000020', 'ema.pt')['num_updates'] == 20


@pytest.mark.slow
@pytest.mark.parametrize('on_gpu', ['true', 'false'])
def test_resume_is_bit_identical(tmp_path, image_dir, on_gpu):
    """4 straight steps == 2 steps, stop, resume for 2 more: weights, EMA, optimizer, RNG all identical."""
    over = tiny(image_dir, **{'data.on_gpu': on_gpu, 'model.params.dropout': 0.1})
    train(['-e', str(tmp_path / 'straight'), '--train.n_steps', '4', *over])
    train(['-e', str(tmp_path / 'split'), '--train.n_steps', '2', *over])
    train(['-e', str(tmp_path / 'split'), '--train.n_steps', '4', '--train.resume', 'latest', *over])
    a, b = tmp_path / 'straight' / 'ckpt' / 'step0000004', tmp_path / 'split' / 'ckpt' / 'step0000004'
    for name in ('model.pt', 'ema.pt', 'optimizer.pt', 'meta.pt', 'rng_0.pt'):
        assert_same_tree(load(a, name), load(b, name), name)
    # and training did move the weights
    first = load(tmp_path / 'straight' / 'ckpt' / 'step0000002', 'model.pt')
    assert any(not torch.equal(first[k], v) for k, v in load(a, 'model.pt').items())


@pytest.mark.slow
@pytest.mark.parametrize('on_gpu', ['false', 'true'])
def test_two_cpu_processes_match_one_process(tmp_path, image_dir, on_gpu):
    """2 gloo processes (with a resume) and 1 process, same global batch, dropout off: the same training.

    Data order, flips, t and ε are drawn for the global batch from generators every process shares, so the
    only difference is the order of the gradient reduction: weights and EMA agree to float32 rounding, as
    amplified by Adam (m/√v turns a rounding difference of a near-zero gradient into up to a step's size):
    1e-5 absolute is 1% of one step at the tiny config's lr of 1e-3. A 2-process checkpoint also resumes on
    1 process and lands on the same weights. The data-on-device variant also keeps the parameters in one buffer
    (train.flat_params: DDP reduces the model's gradients, then they are gathered into the one optimizer tensor).
    """
    launch = ('accelerate', 'launch', '--multi_gpu', '--num_processes', '2', '--main_process_port', str(free_port()))
    over = tiny(image_dir, **{'data.on_gpu': on_gpu, 'train.sample_freq': 2, 'model.params.dropout': 0.0,
                              'train.flat_params': on_gpu})
    two, one, mixed = tmp_path / 'two', tmp_path / 'one', tmp_path / 'mixed'
    p = train(['-e', str(two), '--train.n_steps', '2', *over], launcher=launch)
    assert '2 process(es)' in p.stdout and 'batch 8 = 2 x 4' in p.stdout
    train(['-e', str(two), '--train.n_steps', '4', '--train.resume', 'latest', *over], launcher=launch)
    train(['-e', str(one), '--train.n_steps', '4', *over])
    train(['-e', str(mixed), '--train.n_steps', '4', '--train.resume', str(two / 'ckpt' / 'step0000002'), *over])
    ck = two / 'ckpt' / 'step0000004'
    assert {'rng_0.pt', 'rng_1.pt'} <= set(os.listdir(ck))
    assert load(ck, 'meta.pt')['step'] == 4 and load(ck, 'ema.pt')['num_updates'] == 4
    assert (two / 'samples' / 'step0000004.png').is_file()
    for other in (one, mixed):
        b = other / 'ckpt' / 'step0000004'
        for name in ('model.pt', 'ema.pt'):
            sa, sb = load(ck, name), load(b, name)
            sa, sb = sa.get('model', sa), sb.get('model', sb)
            for k in sa:
                torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=f'{other.name} {name} {k}')
    assert not torch.equal(load(one / 'ckpt' / 'step0000002', 'model.pt')['conv_in.weight'],
                           load(ck, 'model.pt')['conv_in.weight'])      # and the weights did move


def one_line_error(p):
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), p.stderr[-2000:]
    return lines[0]


@pytest.mark.slow
def test_unknown_key_and_wrong_type_are_one_line(tmp_path):
    msg = one_line_error(train(['-e', str(tmp_path / 'x'), '--train.lrr', '1'], check=False))
    assert "unknown config key 'train.lrr'" in msg and 'train.lr' in msg
    msg = one_line_error(train(['-e', str(tmp_path / 'x'), '--train.batch_size', 'many'], check=False))
    assert 'train.batch_size' in msg and 'int' in msg
    assert not (tmp_path / 'x').exists()


@pytest.mark.slow
def test_missing_dataset_is_one_line(tmp_path):
    msg = one_line_error(train(['-e', str(tmp_path / 'x'), '--data.root', str(tmp_path / 'nowhere')], check=False))
    assert 'train-images-idx3-ubyte' in msg and str(tmp_path / 'nowhere') in msg and 'dataset-fashion-mnist' in msg


@pytest.mark.slow
def test_micro_batch_must_divide(tmp_path, image_dir):
    msg = one_line_error(train(['-e', str(tmp_path / 'x'), *tiny(image_dir, **{'train.micro_batch': 3})], check=False))
    assert 'micro_batch 3' in msg


@pytest.mark.slow
def test_micro_batches_accumulate_to_the_same_step(tmp_path, image_dir):
    """Gradient accumulation over 2 micro-batches gives the same update as one batch (dropout off)."""
    over = tiny(image_dir, **{'model.params.dropout': 0.0, 'train.save_freq': 1})
    train(['-e', str(tmp_path / 'full'), '--train.n_steps', '1', *over])
    train(['-e', str(tmp_path / 'micro'), '--train.n_steps', '1', '--train.micro_batch', '4', *over])
    a = load(tmp_path / 'full' / 'ckpt' / 'step0000001', 'model.pt')
    b = load(tmp_path / 'micro' / 'ckpt' / 'step0000001', 'model.pt')
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, image_dir):
    """train.compile true (inductor, with the shipped configs' forced channels_last layout) trains the same model
    as eager: fp32, dropout off, 3 steps. The one compiled training test (inductor takes about a minute here)."""
    over = tiny(image_dir, **{'model.params.dropout': 0.0, 'train.save_freq': 3, 'train.n_samples': 0})
    train(['-e', str(tmp_path / 'eager'), '--train.n_steps', '3', *over])
    train(['-e', str(tmp_path / 'compiled'), '--train.n_steps', '3', '--train.compile', 'true', *over])
    a = load(tmp_path / 'eager' / 'ckpt' / 'step0000003', 'model.pt')
    b = load(tmp_path / 'compiled' / 'ckpt' / 'step0000003', 'model.pt')
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5)     # Adam steps are ~1e-4 here
    # Adam's first moments are a running sum of the gradients, not normalised like the steps: they show a
    # gradient error that the weights would hide
    ma = load(tmp_path / 'eager' / 'ckpt' / 'step0000003', 'optimizer.pt')['state']
    mb = load(tmp_path / 'compiled' / 'ckpt' / 'step0000003', 'optimizer.pt')['state']
    assert ma.keys() == mb.keys() and len(ma) > 10
    for i in ma:
        m = ma[i]['exp_avg']
        torch.testing.assert_close(mb[i]['exp_avg'], m, rtol=1e-3, atol=3e-4 * m.abs().max().item() + 1e-12)


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, image_dir):
    exp = tmp_path / 'nan'
    over = tiny(image_dir, **{'train.lr': 1e30, 'train.warmup_steps': 1, 'train.save_freq': 1,
                              'train.print_freq': 1, 'train.grad_clip': 1e30})
    p = train(['-e', str(exp), '--train.n_steps', '6', *over], check=False)
    msg = one_line_error(p)
    assert 'non-finite' in msg and 'last good checkpoint' in msg
    steps = sorted(d for d in os.listdir(exp / 'ckpt') if d.startswith('step'))
    assert steps and open(exp / 'ckpt' / 'latest').read().strip() == steps[-1]
    assert int(steps[-1][4:]) < 6
    assert not [d for d in os.listdir(exp / 'ckpt') if d.startswith('.tmp')]


@pytest.mark.slow
def test_corrupt_checkpoint_resume_is_one_line(tmp_path, image_dir):
    exp = tmp_path / 'c'
    train(['-e', str(exp), '--train.n_steps', '2', *tiny(image_dir)])
    with open(exp / 'ckpt' / 'step0000002' / 'model.pt', 'r+b') as f:
        f.truncate(100)
    msg = one_line_error(train(['-e', str(exp), '--train.n_steps', '4', '--train.resume', 'latest', *tiny(image_dir)],
                               check=False))
    assert 'model.pt' in msg and 'corrupt' in msg
    msg = one_line_error(train(['-e', str(tmp_path / 'none'), '--train.resume', 'latest', *tiny(image_dir)], check=False))
    assert 'no checkpoint found' in msg


def start_training(exp, over, launcher=(sys.executable,)):
    """A run of 100000 steps into `exp` in the background, returned once it logged its model line (it trains)."""
    cmd = [*launcher, os.path.join(ROOT, 'train_ddpm.py'), '-c', os.path.join(ROOT, 'configs/ddpm_tiny.yaml'),
           '-e', str(exp), '--train.n_steps', '100000', *over]
    p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, deadline = exp / 'output.log', time.time() + 120
    while time.time() < deadline and not (log.exists() and 'model:' in log.read_text()):
        time.sleep(0.2)
    return p


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path, image_dir):
    exp = tmp_path / 'term'
    over = tiny(image_dir, **{'train.save_freq': 100000, 'train.print_freq': 100000})
    p = start_training(exp, over)
    time.sleep(2.0)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert 'stopped by a signal' in out
    latest = open(exp / 'ckpt' / 'latest').read().strip()
    step = load(exp / 'ckpt' / latest, 'meta.pt')['step']
    assert step > 0 and latest == f'step{step:07d}'
    train(['-e', str(exp), '--train.n_steps', str(step + 2), '--train.resume', 'latest', *over])
    assert load(exp / 'ckpt' / f'step{step + 2:07d}', 'meta.pt')['step'] == step + 2


@pytest.mark.parametrize('skip_type,spacing', [('trailing', 'trailing'), (None, 'logsnr')])
def test_training_fid_is_logged(tmp_path, image_dir, weights, skip_type, spacing):
    """train.fid_freq: EMA samples from a fast sampler -> FID against the cached training-set statistics; without
    train.fid_skip_type the sampler's default spacing (logsnr for DPM-Solver++)."""
    exp = tmp_path / 'fid'
    over = tiny(image_dir, **{'train.fid_freq': 2, 'train.fid_n_samples': 6, 'train.fid_steps': 3,
                              'train.fid_sampler': 'dpm_solver++', 'train.fid_weights': weights['random'],
                              **({'train.fid_skip_type': skip_type} if skip_type else {})})
    env_cache = dict(ENV, DDPM_CACHE=str(tmp_path / 'cache'))
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'train_ddpm.py'), '-c', os.path.join(ROOT, 'configs/ddpm_tiny.yaml'),
                        '-e', str(exp), '--train.n_steps', '2', *over], cwd=ROOT, env=env_cache, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f'FID: sampling 6 EMA images (dpm_solver++, 3 {spacing} steps)' in p.stdout
    line = [l for l in p.stdout.splitlines() if 'step 2: fid' in l]
    assert line, p.stdout[-2000:]
    fid = float(line[0].split('fid ')[1])
    assert math.isfinite(fid) and fid > 0
    assert list((tmp_path / 'cache' / 'fid_stats').glob('*.npz'))        # the reference statistics were cached


def worker_pids(exp):
    """PIDs of the training processes (not the launcher) whose command line names `exp`."""
    pids = []
    for d in os.listdir('/proc'):
        if d.isdigit():
            try:
                cmd = open(f'/proc/{d}/cmdline', 'rb').read().split(b'\0')
            except OSError:
                continue
            text = b' '.join(cmd).decode(errors='replace')
            if str(exp) in text and 'train_ddpm.py' in text and 'accelerate' not in text and 'torchrun' not in text:
                pids.append(int(d))
    return pids


@pytest.mark.slow
def test_signal_to_one_of_two_processes_saves_and_stops_both(tmp_path, image_dir):
    """SIGTERM reaching only one rank, with no logging step in sight (print_freq 100000): the ranks agree within a
    step, save together and stop, well inside a launcher's grace period (torchrun kills after about 30 s)."""
    exp = tmp_path / 'term2'
    over = tiny(image_dir, **{'data.on_gpu': 'false', 'train.save_freq': 100000, 'train.print_freq': 100000})
    p = start_training(exp, over, ('accelerate', 'launch', '--multi_gpu', '--num_processes', '2',
                                   '--main_process_port', str(free_port())))
    time.sleep(3.0)                                  # training steps are running
    pids = worker_pids(exp)
    assert len(pids) == 2, pids
    t0 = time.time()
    os.kill(pids[1], signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert time.time() - t0 < 20, time.time() - t0
    assert 'stopped by a signal' in out, err[-3000:]
    # the launcher reports the workers' exit status 143 with a traceback of its own; the workers raise nothing
    assert 'collective' not in err.lower() and 'train_ddpm.py", line' not in err, err[-3000:]
    latest = open(exp / 'ckpt' / 'latest').read().strip()
    ck = exp / 'ckpt' / latest
    assert {'rng_0.pt', 'rng_1.pt'} <= set(os.listdir(ck)) and load(ck, 'meta.pt')['step'] > 0
    assert not (exp / '.lock').exists()


@pytest.mark.slow
def test_fid_settings_fail_at_start_on_every_process(tmp_path, image_dir):
    launch = ('accelerate', 'launch', '--multi_gpu', '--num_processes', '2', '--main_process_port', str(free_port()))
    over = tiny(image_dir, **{'train.fid_freq': 2, 'train.fid_steps': 5, 'train.fid_weights': str(tmp_path / 'missing.pth')})
    p = train(['-e', str(tmp_path / 'f'), '--train.n_steps', '4', *over], launcher=launch, check=False)
    assert p.returncode != 0
    errors = [l for l in p.stderr.splitlines() if l.startswith('error: ')]
    assert len(errors) == 2 and all('train.fid_weights' in l and 'missing.pth' in l for l in errors), p.stderr[-3000:]
    assert 'train_ddpm.py", line' not in p.stderr          # only the launcher's own report of the exit status
    msg = one_line_error(train(['-e', str(tmp_path / 'g'), *tiny(image_dir, **{'train.fid_freq': 2, 'train.fid_steps': 50})],
                               check=False))
    assert 'train.fid_steps' in msg and 'skip_steps must be an integer in [1, 10]' in msg


@pytest.mark.slow
def test_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path, image_dir):
    exp = tmp_path / 'r'
    train(['-e', str(exp), '--train.n_steps', '2', *tiny(image_dir)])
    msg = one_line_error(train(['-e', str(exp), '--train.n_steps', '2', *tiny(image_dir)], check=False))
    assert 'already holds checkpoints' in msg and '--train.resume latest' in msg


def test_publish_prunes_only_older_checkpoints(tmp_path):
    from utils import checkpoint as ckpt
    root = tmp_path / 'ckpt'
    root.mkdir()

    def save(step):
        tmp = ckpt.tmp_dir_for(str(root), step)
        os.makedirs(tmp)
        open(os.path.join(tmp, 'model.pt'), 'w').write(str(step))
        ckpt.publish(str(root), step, keep=2)
    for step in (2, 4, 6):
        save(step)
    assert sorted(os.listdir(root)) == ['latest', 'step0000004', 'step0000006']
    save(3)                                # a run resumed from an older step: newer ones stay, the new one is kept
    assert sorted(os.listdir(root)) == ['latest', 'step0000003', 'step0000004', 'step0000006']
    assert open(root / 'latest').read().strip() == 'step0000003'
    save(4)                                # the same step again replaces it whole; step 3 is the one kept before it
    assert open(root / 'step0000004' / 'model.pt').read() == '4'
    assert sorted(os.listdir(root)) == ['latest', 'step0000003', 'step0000004', 'step0000006']


@pytest.mark.slow
def test_bf16_weights_train_as_autocast_bit_for_bit_and_resume_exactly(tmp_path, image_dir):
    """train.bf16_weights (a bf16 copy of the conv/linear weights, fp32 master) trains what bf16 autocast on the
    fp32 model trains, bit for bit, when both keep the same memory layout (train.channels_last: the copy's conv
    weights are channels_last, and a layout changes the CPU's conv kernels); and it resumes exactly."""
    over = tiny(image_dir, **{'model.params.dropout': 0.0, 'train.mixed_precision': 'bf16', 'train.n_samples': 0,
                              'train.channels_last': 'true'})
    train(['-e', str(tmp_path / 'autocast'), '--train.n_steps', '4', *over])
    train(['-e', str(tmp_path / 'copy'), '--train.n_steps', '4', '--train.bf16_weights', 'true', *over])
    train(['-e', str(tmp_path / 'split'), '--train.n_steps', '2', '--train.bf16_weights', 'true', *over])
    train(['-e', str(tmp_path / 'split'), '--train.n_steps', '4', '--train.bf16_weights', 'true',
           '--train.resume', 'latest', *over])
    a, b, c = (tmp_path / run / 'ckpt' / 'step0000004' for run in ('autocast', 'copy', 'split'))
    for name in ('model.pt', 'ema.pt', 'optimizer.pt', 'meta.pt', 'rng_0.pt'):
        assert_same_tree(load(a, name), load(b, name), name)
        assert_same_tree(load(b, name), load(c, name), name)
    assert all(v.dtype == torch.float32 for v in load(b, 'model.pt').values())
    first = load(tmp_path / 'copy' / 'ckpt' / 'step0000002', 'model.pt')
    assert any(not torch.equal(first[k], v) for k, v in load(b, 'model.pt').items())


@pytest.mark.slow
def test_bf16_weights_need_bf16(tmp_path, image_dir):
    msg = one_line_error(train(['-e', str(tmp_path / 'x'), *tiny(image_dir), '--train.bf16_weights', 'true',
                                '--train.mixed_precision', 'no'], check=False))
    assert 'train.bf16_weights needs bf16 mixed precision' in msg and '--train.mixed_precision bf16' in msg
    assert not (tmp_path / 'x').exists()


@pytest.mark.slow
def test_flat_params_train_the_same_and_checkpoints_cross_settings(tmp_path, image_dir):
    """train.flat_params (the parameters as views of one buffer, one optimizer tensor) trains what the per-parameter
    optimizer trains: the same weights, EMA and (per-parameter, as written) Adam state up to the clipping norm's
    summation order (up to 1.4e-7 here, 0.07% of one Adam step of lr 2e-4); it resumes bit for bit, and a checkpoint
    of either setting resumes in the other."""
    over = tiny(image_dir, **{'model.params.dropout': 0.0, 'train.n_samples': 0})
    flat = ['--train.flat_params', 'true']
    for name, setting in [('per_param', []), ('flat', flat)]:
        train(['-e', str(tmp_path / name), '--train.n_steps', '4', *setting, *over])
    # resumed from the step-2 checkpoints of those two runs, in new folders
    for name, setting, source in [('flat_split', flat, 'flat'), ('to_flat', flat, 'per_param'), ('from_flat', [], 'flat')]:
        train(['-e', str(tmp_path / name), '--train.n_steps', '4', *setting, *over,
               '--train.resume', str(tmp_path / source / 'ckpt' / 'step0000002')])
    ck = {name: tmp_path / name / 'ckpt' / 'step0000004' for name in ('per_param', 'flat', 'flat_split', 'to_flat', 'from_flat')}
    for name in ('model.pt', 'ema.pt', 'optimizer.pt', 'meta.pt', 'rng_0.pt'):
        assert_same_tree(load(ck['flat'], name), load(ck['flat_split'], name), name)

    def assert_close_tree(a, b, atol, path=''):
        if isinstance(a, dict):
            assert a.keys() == b.keys(), path
            for k in a:
                assert_close_tree(a[k], b[k], atol, f'{path}.{k}')
        elif isinstance(a, torch.Tensor):
            assert a.shape == b.shape, path
            torch.testing.assert_close(a, b, rtol=1e-5, atol=atol, msg=path)
        else:
            assert a == b, path
    for other in ('flat', 'to_flat', 'from_flat'):      # a lost gradient or refresh moves weights by ~2e-4
        for name, atol in (('model.pt', 1e-6), ('ema.pt', 1e-6), ('optimizer.pt', 1e-9)):
            assert_close_tree(load(ck['per_param'], name), load(ck[other], name), atol, f'{other}/{name}')
    moved = load(tmp_path / 'flat' / 'ckpt' / 'step0000002', 'model.pt')
    assert any(not torch.equal(moved[k], v) for k, v in load(ck['flat'], 'model.pt').items())
    state = load(ck['flat'], 'optimizer.pt')['state']
    assert len(state) == len(load(ck['flat'], 'model.pt')) and all(s['step'].item() == 4 for s in state.values())


def test_train_fast_fills_the_speed_switches_and_explicit_ones_win():
    """train.fast true gives every speed switch left null its fast value, false its plain one; a switch set in the
    config or on the command line keeps its value (ablations); nonsense is one line before anything runs."""
    import train_ddpm
    from utils.config import apply_overrides, load_config
    from utils.errors import UserError
    cfg = load_config(os.path.join(ROOT, 'configs', 'ddpm_cifar10.yaml'))
    plain = train_ddpm.resolve_speed(apply_overrides(cfg, []))
    assert {k: plain[k.split('.')[0]][k.split('.')[1]] for k in train_ddpm.PLAIN} == train_ddpm.PLAIN
    fast = train_ddpm.resolve_speed(apply_overrides(cfg, ['--train.fast', 'true', '--train.flat_params', 'false']))
    expect = dict(train_ddpm.FAST, **{'train.flat_params': False})
    assert {k: fast[k.split('.')[0]][k.split('.')[1]] for k in expect} == expect
    train_ddpm.check_config(fast)
    for over, words in ((['--train.fast', '1'], "config key 'train.fast' expects bool"),
                        (['--train.compile', 'sometimes'], 'train.compile must be true or false'),
                        (['--train.compile_mode', 'turbo'], 'train.compile_mode must be one of default')):
        with pytest.raises(UserError, match=words):
            train_ddpm.check_config(train_ddpm.resolve_speed(apply_overrides(cfg, over)))
