"""bench/fid_table.py end to end on CPU, run as its command: real sample_ddpm.py runs per row, FID per row
(64-d features of random Inception weights), resumable."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from test_sample_cli import CONFIG, ENV, TINY, ckpt_dir  # noqa: F401  (the tiny checkpoint fixture)
from utils import fid as F
from utils.images import Uint8Images

pytestmark = pytest.mark.slow      # runs bench/fid_table.py and the sampler as commands
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FidTable:
    """`python bench/fid_table.py ARGS` in a fresh process; a one-line error is raised as UserError."""

    @staticmethod
    def main(argv):
        from utils.errors import UserError
        p = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'fid_table.py'), *argv], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=600)
        if p.returncode == 2 and p.stderr.startswith('error: ') and len(p.stderr.strip().splitlines()) == 1:
            raise UserError(p.stderr.strip()[len('error: '):])
        assert p.returncode == 0, p.stderr[-3000:]


fid_table = FidTable()


def reference(weights, seed):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(12, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    return F.features_to_stats(F.extract_features(Uint8Images(images, rgb=True), ('64',), weights['random'], 'cpu')['64'])


def test_fid_table_rows_stages_and_resume(tmp_path, ckpt_dir, weights):
    """Rows sampled by separate `--stage sample` runs (as one process per GPU would), then scored together, give the
    table of one `--stage all` run; each row's command has its skip type; a rerun finds every image on disk and
    reproduces the numbers; scoring a row that was never sampled is a one-line error."""
    from utils.errors import UserError
    F.save_stats(tmp_path / 'ref.npz', reference(weights, 0))
    common = ['-c', CONFIG, '--weights', ckpt_dir, '--ref-stats', str(tmp_path / 'ref.npz'),
              '--feature-extractor-weights', weights['random'], '--dims', '64', '--n-samples', '4',
              '--micro-batch', '2', *TINY]
    rows = 'ddpm:fixed_small:5,dpm_solver++:-:4:logsnr,ddpm:fixed_large:20'
    for row in rows.split(',')[:2]:
        fid_table.main(common + ['--out-dir', str(tmp_path / 'table'), '--rows', row, '--stage', 'sample',
                                 '--feature-extractor-weights', str(tmp_path / 'not-needed-to-sample.pth')])
    assert not (tmp_path / 'table' / 'fid_table.json').exists()
    with pytest.raises(UserError, match='no finished samples'):
        fid_table.main(common + ['--out-dir', str(tmp_path / 'table'), '--rows', rows, '--stage', 'score'])
    fid_table.main(common + ['--out-dir', str(tmp_path / 'table'), '--rows', rows.split(',', 2)[0] + ',' +
                             rows.split(',')[1], '--stage', 'score'])
    staged = json.load(open(tmp_path / 'table' / 'fid_table.json'))['rows']
    before = os.path.getmtime(tmp_path / 'table' / 'ddpm-fixed_small-5' / '000000.png')
    fid_table.main(common + ['--out-dir', str(tmp_path / 'table'), '--rows', rows])      # all: resumes two rows
    res = json.load(open(tmp_path / 'table' / 'fid_table.json'))['rows']
    assert [r['name'] for r in res] == ['ddpm-fixed_small-5', 'dpm_solverpp-4-logsnr', 'ddpm-fixed_large-20']
    assert all(np.isfinite(r['fid']) and r['fid'] > 0 and r['n_samples'] == 4 for r in res)
    assert [r['fid'] for r in res[:2]] == pytest.approx([r['fid'] for r in staged], rel=1e-6)
    assert os.path.getmtime(tmp_path / 'table' / 'ddpm-fixed_small-5' / '000000.png') == before
    assert '--skip_type uniform --skip_steps 5' in res[0]['command'] and '--skip_type' not in res[2]['command']
    assert '--skip_type logsnr --skip_steps 4' in res[1]['command']
    table = open(tmp_path / 'table' / 'fid_table.md').read().splitlines()
    assert len(table) == 2 + 3 and table[4].startswith('| ddpm | fixed_large | 20 | - |')
    assert table[3].startswith('| dpm_solver++ | - | 4 | logsnr |')


def test_bad_rows_are_one_line(tmp_path, ckpt_dir, weights):
    from utils.errors import UserError
    with pytest.raises(UserError, match="unknown spacing 'even'; choose one of uniform"):
        fid_table.main(['-c', CONFIG, '--weights', ckpt_dir, '--out-dir', str(tmp_path), '--ref-stats', 'x.npz',
                        '--rows', 'ddim:-:10:even', *TINY])
    with pytest.raises(UserError, match='not SAMPLER:VAR_TYPE:STEPS'):
        fid_table.main(['-c', CONFIG, '--weights', ckpt_dir, '--out-dir', str(tmp_path), '--ref-stats', 'x.npz',
                        '--rows', 'ddpm-100', *TINY])
