"""models/convert.py: diffusers' UNet2DModel <-> this repo's UNet, both ways, for the CIFAR-10 and CelebA-HQ
networks (randomly initialised: the same outputs to float tolerance, round trips bit for bit), diffusers folders
read by sample_ddpm.py, and EMA weights exported as safetensors."""
import json
import os
import subprocess
import sys

import pytest
import torch

from models import build_model
from models.convert import (diffusers_config, from_diffusers, from_diffusers_state, params_of, to_diffusers,
                            to_diffusers_state)
from utils.config import apply_overrides, load_config
from utils.errors import UserError

diffusers = pytest.importorskip('diffusers')      # a test dependency (setup.sh installs it)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {'cifar10': ('ddpm_cifar10.yaml', 32), 'celebahq': ('ddpm_celebahq.yaml', 64)}   # CelebA-HQ run at 64 px
pytestmark = pytest.mark.usefixtures('one_thread')


def randomise(model, seed):
    """Every weight random (the reference init zeroes the last convs: all outputs would be 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def diffusers_unet(config):
    return diffusers.UNet2DModel(**{k: v for k, v in config.items() if k != '_class_name'})


@pytest.mark.parametrize('name', CONFIGS)
def test_diffusers_unet_and_this_unet_compute_the_same_both_ways(name):
    file, size = CONFIGS[name]
    cfg = load_config(os.path.join(ROOT, 'configs', file))
    params = cfg['model']['params']
    config = diffusers_config(params, cfg['data']['img_size'])
    assert params_of(config, name) == dict(params, dropout=float(params['dropout']))
    theirs, ours = randomise(diffusers_unet(config), 0), randomise(build_model(cfg['model']), 1)
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    x = torch.randn(2, params['in_channels'], size, size, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3, 700])
    # diffusers -> this repo
    converted = build_model(cfg['model']).eval()
    converted.load_state_dict(from_diffusers_state(theirs.state_dict(), params))
    with torch.no_grad():
        want, got = theirs(x, t).sample, converted(x, t)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert want.abs().max() > 0.05
    back = to_diffusers_state(converted.state_dict(), params)
    assert back.keys() == theirs.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in theirs.state_dict().items())          # bit for bit
    # this repo -> diffusers
    other = diffusers_unet(config).eval()
    other.load_state_dict(to_diffusers_state(ours.state_dict(), params))
    with torch.no_grad():
        torch.testing.assert_close(other(x, t).sample, ours(x, t), atol=1e-5, rtol=1e-4)
    again = from_diffusers_state(other.state_dict(), params)
    assert all(torch.equal(again[k], v) for k, v in ours.state_dict().items())


def test_folders_round_trip_and_diffusers_reads_ours(tmp_path):
    cfg = apply_overrides(load_config(os.path.join(ROOT, 'configs', 'ddpm_tiny.yaml')), [])
    ours = randomise(build_model(cfg['model']), 3)
    to_diffusers(ours.state_dict(), cfg['model']['params'], cfg['data']['img_size'], str(tmp_path / 'unet'))
    assert sorted(os.listdir(tmp_path / 'unet')) == ['config.json', 'diffusion_pytorch_model.safetensors']
    params, sd = from_diffusers(str(tmp_path))                       # a pipeline folder: the UNet in unet/
    assert params == dict(cfg['model']['params'], dropout=0.0)
    assert all(torch.equal(sd[k], v) for k, v in ours.state_dict().items())
    loaded = diffusers.UNet2DModel.from_pretrained(str(tmp_path / 'unet')).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([5, 90])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t).sample, ours(x, t), atol=1e-5, rtol=1e-4)


def test_other_networks_are_refused_in_one_line(tmp_path):
    cfg = load_config(os.path.join(ROOT, 'configs', 'ddpm_tiny.yaml'))
    config = diffusers_config(cfg['model']['params'], 16)
    for change, words in (({'flip_sin_to_cos': True}, 'flip_sin_to_cos = True'),
                          ({'down_block_types': ['CrossAttnDownBlock2D', 'DownBlock2D']}, 'are not the DDPM UNet')):
        with pytest.raises(UserError, match=words):
            params_of(dict(config, **change), 'config.json')
    with pytest.raises(UserError, match='is not a diffusers folder'):
        from_diffusers(str(tmp_path))
    (tmp_path / 'config.json').write_text(json.dumps(config))
    with pytest.raises(UserError, match='holds no diffusion_pytorch_model'):
        from_diffusers(str(tmp_path))


@pytest.mark.slow
def test_sample_from_a_diffusers_folder_and_export_safetensors(tmp_path):
    """sample_ddpm.py --weights <diffusers folder> samples the converted network (the same images as from this
    repo's own file of those weights); another config's network is one line; `python -m models.convert` writes a
    checkpoint's EMA weights as safetensors and as a diffusers folder."""
    from safetensors.torch import load_file
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')
    tiny = ['--diffusion.total_steps', '5']
    cfg = apply_overrides(load_config(os.path.join(ROOT, 'configs', 'ddpm_tiny.yaml')), tiny)
    ours = randomise(build_model(cfg['model']), 4)
    ck = tmp_path / 'ck'
    ck.mkdir()
    torch.save({'model': ours.state_dict(), 'num_updates': 1, 'decay': 0.9999}, ck / 'ema.pt')
    run = lambda *a: subprocess.run([sys.executable, *a], cwd=ROOT, env=env, capture_output=True, text=True,
                                    timeout=300)
    p = run('-m', 'models.convert', 'to-diffusers', '-c', 'configs/ddpm_tiny.yaml', '--weights', str(ck),
            '--out', str(tmp_path / 'pipe' / 'unet'), *tiny)
    assert p.returncode == 0, p.stderr[-2000:]
    p = run('-m', 'models.convert', 'safetensors', '-c', 'configs/ddpm_tiny.yaml', '--weights', str(ck),
            '--out', str(tmp_path / 'ema.safetensors'), *tiny)
    assert p.returncode == 0, p.stderr[-2000:]
    exported = load_file(tmp_path / 'ema.safetensors')
    assert all(torch.equal(exported[k], v) for k, v in ours.state_dict().items())
    sample = ['sample_ddpm.py', '-c', 'configs/ddpm_tiny.yaml', '--n_samples', '2', '--micro_batch', '2', *tiny]
    for name, weights in (('a', tmp_path / 'pipe'), ('b', ck / 'ema.pt'), ('s', tmp_path / 'ema.safetensors')):
        p = run(*sample, '--weights', str(weights), '--save_dir', str(tmp_path / name))
        assert p.returncode == 0, p.stderr[-2000:]
    for f in ('000000.png', '000001.png'):
        assert (tmp_path / 'a' / f).read_bytes() == (tmp_path / 'b' / f).read_bytes() == (tmp_path / 's' / f).read_bytes()
    (tmp_path / 'bad.safetensors').write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}')
    p = run(*sample, '--weights', str(tmp_path / 'bad.safetensors'), '--save_dir', str(tmp_path / 'd'))
    assert p.returncode == 2 and 'bad.safetensors is corrupt or not a PyTorch checkpoint' in p.stderr
    p = run(*sample, '--weights', str(tmp_path / 'pipe'), '--save_dir', str(tmp_path / 'c'), '--model.params.dim', '64')
    assert p.returncode == 2 and 'has model.params.dim = 32, the config 64' in p.stderr
