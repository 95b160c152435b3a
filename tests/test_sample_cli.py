"""sample_ddpm.py end to end on a tiny random UNet (CPU): modes, determinism across processes, resume, errors."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

import sample_ddpm
from diffusions import from_config, make_sampler
from models import build_model
from utils import images
from utils.config import apply_overrides, load_config
from utils.errors import run_main

from conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'configs', 'ddpm_tiny.yaml')
TINY = ['--diffusion.total_steps', '20', '--model.params.dim', '16', '--data.img_size', '8']   # 8x8 gray, T = 20
# no GPU; one thread per process so 1 and 2 processes run the same kernels; real multi-process on a CPU-only
# machine: `accelerate launch --multi_gpu` runs torchrun, and the script's Accelerator(cpu=True) on a machine
# without CUDA makes each process join the gloo group
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def tiny_cfg():
    return apply_overrides(load_config(CONFIG), TINY)


def random_unet(cfg, seed):
    """The tiny UNet with every weight random (the real init zeroes the output conv: all outputs would be 0)."""
    model = build_model(cfg['model'])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope='module')
def ckpt_dir(tmp_path_factory):
    """A checkpoint folder laid out as train_ddpm.py writes it, with different raw and EMA weights."""
    d = tmp_path_factory.mktemp('run') / 'ckpt' / 'step0000100'
    d.mkdir(parents=True)
    cfg = tiny_cfg()
    torch.save(random_unet(cfg, 0).state_dict(), d / 'model.pt')
    torch.save({'model': random_unet(cfg, 1).state_dict(), 'num_updates': 0, 'decay': 0.9999}, d / 'ema.pt')
    return str(d)


def cli(weights, save_dir, *extra, n=5, mb=2):
    return ['-c', CONFIG, '--weights', str(weights), '--n_samples', str(n), '--micro_batch', str(mb),
            '--save_dir', str(save_dir), *TINY, *extra]


@pytest.fixture
def run(monkeypatch):
    """Run sample_ddpm.main in this process on the CPU, then forget the Accelerator state it made.

    One thread during the test: the tiny convolutions are faster so on a shared 2-core machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def _run(argv):
        try:
            sample_ddpm.main(argv)
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
    yield _run
    torch.set_num_threads(threads)


def pngs(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith('.png'))


def read(folder, name):
    return images.load_png(os.path.join(folder, name))


def test_modes_write_images_and_rows_of_the_right_size(run, ckpt_dir, tmp_path):
    skip = ['--skip_steps', '10']
    run(cli(ckpt_dir, tmp_path / 's', *skip, '--grid', '4', '--save_npz'))
    run(cli(ckpt_dir, tmp_path / 'd', *skip, '--mode', 'denoise', '--n_denoise', '4', '--grid', '3'))
    run(cli(ckpt_dir, tmp_path / 'p', *skip, '--mode', 'progressive', '--n_progressive', '10'))
    names = [f'{i:06d}.png' for i in range(5)]
    for sub, width in (('s', 8), ('d', 4 * 8), ('p', 10 * 8)):
        assert pngs(tmp_path / sub) == names
        for name in names:
            with Image.open(tmp_path / sub / name) as im:
                assert im.size == (width, 8) and im.mode == 'L'
    # a row ends at the final image: the same chain as sample mode (x_0 = x̂0 at the last DDPM step)
    for name in names:
        final = read(tmp_path / 's', name)
        assert np.array_equal(read(tmp_path / 'd', name)[:, -8:], final)
        assert np.array_equal(read(tmp_path / 'p', name)[:, -8:], final)
        assert not np.array_equal(read(tmp_path / 'd', name)[:, :8], final)     # the first snapshot is noisy
    # grids (make_grid: 2 px padding, gray -> RGB) and the npz that FID tools read
    with Image.open(tmp_path / 's' / 'grid' / 'grid.png') as im:
        assert im.size == (2 * 10 + 2, 2 * 10 + 2)
    with Image.open(tmp_path / 'd' / 'grid' / 'grid.png') as im:
        assert im.size == (32 + 4, 3 * 10 + 2)
    arr = np.load(tmp_path / 's' / 'samples.npz')['arr_0']
    assert arr.shape == (5, 8, 8, 1) and arr.dtype == np.uint8
    assert np.array_equal(arr, np.stack([read(tmp_path / 's', n) for n in names]))
    assert arr.std() > 10           # the random network gives real images, not a constant


def test_seed_decides_the_images(run, ckpt_dir, tmp_path):
    run(cli(ckpt_dir, tmp_path / 'a', '--seed', '1'))
    run(cli(ckpt_dir, tmp_path / 'b', '--seed', '1'))
    run(cli(ckpt_dir, tmp_path / 'c', '--seed', '2'))
    for name in pngs(tmp_path / 'a'):
        a = (tmp_path / 'a' / name).read_bytes()
        assert a == (tmp_path / 'b' / name).read_bytes()
        assert a != (tmp_path / 'c' / name).read_bytes()


@pytest.mark.parametrize('load_ema,sampler,skip', [
    ('false', 'ddpm', ['--skip_steps', '5']),
    ('true', 'ddpm', ['--skip_steps', '5', '--var_type', 'fixed_small']),
    ('true', 'ddim', ['--skip_type', 'quad', '--skip_steps', '6', '--eta', '0.5']),
    ('true', 'dpm_solver++', ['--skip_type', 'uniform2', '--skip_steps', '5']),
    ('true', 'dpm_solver++', ['--skip_steps', '5']),      # its default spacing: logsnr
    ('true', 'ddim', ['--skip_steps', '5']),              # its default spacing: logsnr
])
def test_load_ema_and_sampler_flags_mean_what_they_say(run, ckpt_dir, tmp_path, load_ema, sampler, skip):
    """The PNGs equal a direct computation with model.pt (false) or ema.pt['model'] (true), and not the other."""
    run(cli(ckpt_dir, tmp_path, '--load_ema', load_ema, '--sampler', sampler, *skip, n=3, mb=3))
    cfg = tiny_cfg()
    opt = dict(zip(skip[::2], skip[1::2]))
    default = {'ddpm': 'uniform', 'ddim': 'logsnr', 'dpm_solver++': 'logsnr'}[sampler]   # by FID (docs/sampling.md)
    ddpm = from_config(cfg['diffusion'], var_type=opt.get('--var_type'), skip_type=opt.get('--skip_type', default),
                       skip_steps=int(opt['--skip_steps']))
    if '--skip_type' not in opt and sampler != 'ddpm':      # the case can tell the two spacings apart
        assert ddpm.timesteps.tolist() != from_config(cfg['diffusion'], skip_type='uniform',
                                                      skip_steps=5).timesteps.tolist()
    got = np.stack([read(tmp_path, n) for n in pngs(tmp_path)])

    def direct(file):
        sd = torch.load(os.path.join(ckpt_dir, file), weights_only=True)
        model = build_model(cfg['model'])
        model.load_state_dict(sd['model'] if file == 'ema.pt' else sd)
        g = sample_ddpm.batch_generator(cfg['seed'], 0, 'cpu')
        x_T = torch.randn((3, 1, 8, 8), generator=g)
        with torch.no_grad():
            x = make_sampler(sampler, ddpm, float(opt.get('--eta', 0))).sample(model.eval(), x_T, g)
        return images.to_uint8(x).permute(0, 2, 3, 1).numpy()

    raw, ema = direct('model.pt'), direct('ema.pt')
    assert not np.array_equal(raw, ema)
    assert np.array_equal(got, raw if load_ema == 'false' else ema)


def launch(args, processes):
    if processes == 1:
        cmd = [sys.executable, os.path.join(ROOT, 'sample_ddpm.py')]
    else:
        cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', str(processes),
               '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
               '--main_process_port', str(free_port()), os.path.join(ROOT, 'sample_ddpm.py')]
    p = subprocess.run(cmd + args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f'on {processes} process(es)' in p.stdout
    return p


@pytest.mark.slow
def test_same_pngs_from_one_and_two_processes_and_after_resume(ckpt_dir, tmp_path):
    # 7 images in batches of 2: [0 1] [2 3] [4 5] [6 + one computed and dropped]; DDPM draws noise every step
    one, two = tmp_path / 'one', tmp_path / 'two'
    p = launch(cli(ckpt_dir, one, '--skip_steps', '10', n=7), 1)
    assert '7/7' in p.stderr and 'img/s' in p.stderr                    # the tqdm bar
    launch(cli(ckpt_dir, two, '--skip_steps', '10', n=7), 2)
    names = pngs(one)
    assert len(names) == 7 and pngs(two) == names
    ref = {n: (one / n).read_bytes() for n in names}
    assert all((two / n).read_bytes() == ref[n] for n in names)

    # an interrupted run: batch [2 3] missing, batches [4 5] and [6] half or fully missing
    for n in ('000002.png', '000003.png', '000004.png', '000006.png'):
        os.remove(two / n)
    kept = {n: os.stat(two / n).st_mtime_ns for n in ('000000.png', '000001.png')}
    p = launch(cli(ckpt_dir, two, '--skip_steps', '10', n=7), 2)
    assert '2 already in' in p.stdout
    assert pngs(two) == names and all((two / n).read_bytes() == ref[n] for n in names)
    assert all(os.stat(two / n).st_mtime_ns == t for n, t in kept.items())     # finished batches were skipped
    assert not [f for f in os.listdir(two) if f.endswith('.tmp')]


def test_png_writes_are_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / '000000.png')
    images.save_png(torch.zeros(1, 4, 4, dtype=torch.uint8), path)
    before = open(path, 'rb').read()

    def killed(self, fp, format=None, **kw):       # dies half way through writing
        fp.write(b'\x89PNG half')
        raise KeyboardInterrupt
    monkeypatch.setattr(Image.Image, 'save', killed)
    with pytest.raises(KeyboardInterrupt):
        images.save_png(torch.full((1, 4, 4), 255, dtype=torch.uint8), path)
    assert open(path, 'rb').read() == before and os.listdir(tmp_path) == ['000000.png']


def bad_cases(tmp_path, ckpt_dir):
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a checkpoint')
    a_file = tmp_path / 'a_file'
    a_file.write_text('keep me')
    out = tmp_path / 'out'
    return [
        (cli(tmp_path / 'missing', out), r'weights .*missing not found'),
        (cli(garbage, out), r'garbage.pt is corrupt or not a PyTorch checkpoint'),
        (cli(ckpt_dir, out, '--model.params.dim', '24'),
         r"does not fit the model of this config: '\S+' has shape \(\d+(, \d+)*\) in the checkpoint but \(\d+(, \d+)*\) in the model"),
        (cli(ckpt_dir, out, '--skip_steps', '0'), r'skip_steps must be an integer in \[1, 20\]'),
        (cli(ckpt_dir, out, '--skip_steps', '21'), r'skip_steps must be an integer in \[1, 20\]'),
        (cli(ckpt_dir, out, '--skip_type', 'quad'), r'--skip_type quad needs --skip_steps'),
        (cli(ckpt_dir, out, '--mode', 'denoise', '--skip_steps', '5', '--n_denoise', '6'), r'--n_denoise must be in \[1, 5\]'),
        (cli(ckpt_dir, out, '--mode', 'progressive', '--n_progressive', '0'), r'--n_progressive must be in \[1, 20\]'),
        (cli(ckpt_dir, out, '--mode', 'movie'), r"unknown --mode 'movie'; choose one of sample, denoise, progressive"),
        (cli(ckpt_dir, out, '--sampler', 'plms'), r"unknown --sampler 'plms'; choose one of ddpm, ddim, dpm_solver\+\+"),
        (cli(ckpt_dir, out, '--var_type', 'learned'), r"unknown --var_type 'learned'; choose one of fixed_large, fixed_small"),
        (cli(ckpt_dir, out, '--sampler', 'ddim', '--eta', '-1'), r'DDIM eta must be a number >= 0'),
        (cli(ckpt_dir, out, '--eta', '0.5'), r'--eta applies to --sampler ddim only'),
        (cli(ckpt_dir, out, '--mode', 'denoise', '--save_npz'), r'--save_npz stores final samples: use it with --mode sample'),
        (cli(ckpt_dir, out, '--load_ema', 'maybe'), r"--load_ema expects true or false, got 'maybe'"),
        (cli(ckpt_dir, out, '--n_samples', 'ten'), r"argument --n_samples: invalid int value: 'ten'"),
        (cli(ckpt_dir, a_file), r'--save_dir .*a_file is a file, not a folder; pass a folder'),
    ]


def test_bad_input_is_one_line_and_writes_nothing(ckpt_dir, tmp_path, capsys, monkeypatch):
    for argv, message in bad_cases(tmp_path, ckpt_dir):
        with pytest.raises(SystemExit) as e:
            run_main(sample_ddpm.main, argv)
        err = capsys.readouterr().err
        assert e.value.code == 2, argv
        assert err.count('\n') == 1 and err.startswith('error: '), err
        assert __import__('re').search(message, err), (message, err)
        assert not (tmp_path / 'out').exists()
    assert (tmp_path / 'a_file').read_text() == 'keep me'


def test_resume_refuses_a_folder_made_with_other_settings(run, ckpt_dir, tmp_path, capsys):
    run(cli(ckpt_dir, tmp_path, '--seed', '1', '--sampler', 'ddim', '--skip_steps', '4', n=2))
    before = {n: (tmp_path / n).read_bytes() for n in pngs(tmp_path)}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(sample_ddpm.main, cli(ckpt_dir, tmp_path, '--seed', '2', '--sampler', 'ddim', '--skip_steps', '4', n=4))
    assert e.value.code == 2
    assert "--save_dir holds images made with seed = 1, not 2" in capsys.readouterr().err
    assert {n: (tmp_path / n).read_bytes() for n in pngs(tmp_path)} == before
    # the same settings with more samples extend the folder; the first images stay as they were
    run(cli(ckpt_dir, tmp_path, '--seed', '1', '--sampler', 'ddim', '--skip_steps', '4', n=4))
    assert len(pngs(tmp_path)) == 4 and all((tmp_path / n).read_bytes() == b for n, b in before.items())


def test_quantize_uint8_rounds_like_save_image():
    # floor((v + 1) * 127.5 + 0.5), clamped to [0, 255], as torchvision's save_image quantizes; the training FID and
    # the bench's bf16 check quantize with it on the device, PNGs with to_uint8 on the CPU
    x = torch.tensor([-1.5, -1.0, 3.2 / 127.5 - 1, 3.7 / 127.5 - 1, 0.0, 1.0, 1.5], dtype=torch.float64)
    q = images.quantize_uint8(x)
    assert q.dtype == torch.uint8 and q.tolist() == [0, 0, 3, 4, 128, 255, 255]
    assert torch.equal(images.to_uint8(x), q)


def test_compiled_sampling_writes_the_eager_images(run, ckpt_dir, tmp_path):
    """--compile end to end: the compiled model (frozen weights; the last batch of 5 padded to the static micro-batch)
    writes the eager run's images (identical on torch 2.14's CPU; a level of rounding allowed in a few pixels)."""
    skip = ['--sampler', 'ddim', '--skip_steps', '5']
    run(cli(ckpt_dir, tmp_path / 'eager', *skip))
    run(cli(ckpt_dir, tmp_path / 'compiled', *skip, '--compile'))
    names = pngs(tmp_path / 'eager')
    assert names == pngs(tmp_path / 'compiled') and len(names) == 5
    eager = np.stack([read(tmp_path / 'eager', n) for n in names]).astype(int)
    compiled = np.stack([read(tmp_path / 'compiled', n) for n in names]).astype(int)
    diff = np.abs(eager - compiled)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
