"""Several machines as Accelerate runs them, played by two launchers on this host (CPU, gloo).

Each launcher is one "machine": `accelerate launch --multi_gpu --num_machines 2 --machine_rank R --num_processes 2
--main_process_ip 127.0.0.1 --main_process_port P` (num_processes counts the processes of all machines), the way
docs/multi_node.md tells users to start a run on two nodes. The run folder is shared, as a shared file system
would share it.
"""
import os
import subprocess
import sys

import pytest
import torch

from conftest import free_port
from test_sample_cli import ENV as SAMPLE_ENV, cli, ckpt_dir, pngs  # noqa: F401  (the tiny checkpoint fixture)
from test_train import ENV, ROOT, image_dir, load, tiny, train  # noqa: F401  (the image folder fixture)

pytestmark = pytest.mark.slow        # starts launchers and training processes


def two_machines(script, args, env):
    """Run `script args` as machine 0 and machine 1 of a 2-machine job (one process each); both must succeed."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_machines', '2',
                               '--machine_rank', str(rank), '--num_processes', '2', '--main_process_ip', '127.0.0.1',
                               '--main_process_port', port, '--mixed_precision', 'no', '--dynamo_backend', 'no',
                               os.path.join(ROOT, script), *args],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f'{out[-2000:]}\n{err[-3000:]}'
    return outs


def test_two_machines_train_what_one_process_trains_and_resume_there(tmp_path, image_dir):
    """2 machines × 1 process: the same training as 1 process (weights and EMA to float32 rounding, as in
    test_train's 2-process test), one checkpoint with both ranks' RNG states, a resume on 1 process."""
    over = tiny(image_dir, **{'model.params.dropout': 0.0, 'train.sample_freq': 4})
    two, one, back = tmp_path / 'two', tmp_path / 'one', tmp_path / 'back'
    (out, _), (out1, _) = two_machines('train_ddpm.py', ['-c', os.path.join(ROOT, 'configs/ddpm_tiny.yaml'),
                                                          '-e', str(two), '--train.n_steps', '4', *over], ENV)
    assert '2 process(es)' in out and 'batch 8 = 2 x 4' in out and out1 == ''    # machine 1 logs nothing
    train(['-e', str(one), '--train.n_steps', '4', *over])
    train(['-e', str(back), '--train.n_steps', '4', '--train.resume', str(two / 'ckpt' / 'step0000002'), *over])
    ck = two / 'ckpt' / 'step0000004'
    assert {'rng_0.pt', 'rng_1.pt'} <= set(os.listdir(ck)) and (two / 'samples' / 'step0000004.png').is_file()
    for other in (one, back):
        for name in ('model.pt', 'ema.pt'):
            a, b = load(ck, name), load(other / 'ckpt' / 'step0000004', name)
            a, b = a.get('model', a), b.get('model', b)
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f'{other.name} {name} {k}')


def test_two_machines_sample_the_pngs_of_one_process(ckpt_dir, tmp_path):
    """sample_ddpm.py on 2 machines writes, into one shared folder, the bytes that 1 process writes."""
    one, two = tmp_path / 'one', tmp_path / 'two'
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'sample_ddpm.py'), *cli(ckpt_dir, one, '--skip_steps', '5', n=5)],
                       cwd=ROOT, env=SAMPLE_ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    (out, _), _ = two_machines('sample_ddpm.py', cli(ckpt_dir, two, '--skip_steps', '5', n=5), SAMPLE_ENV)
    assert 'on 2 process(es)' in out
    names = pngs(one)
    assert len(names) == 5 and pngs(two) == names
    assert all((two / n).read_bytes() == (one / n).read_bytes() for n in names)
