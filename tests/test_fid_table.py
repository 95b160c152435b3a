"""bench/fid_table.py end to end on CPU: real sample_ddpm.py runs per row, FID per row, resumable."""
import json
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))
import fid_table  # noqa: E402
from test_sample_cli import CONFIG, TINY, ckpt_dir  # noqa: E402,F401  (the tiny checkpoint fixture)
from utils import fid as F  # noqa: E402

ROWS = 'ddpm:fixed_large:20,ddpm:fixed_small:5,ddim:-:5,dpm_solver++:-:4'


@pytest.fixture(autouse=True)
def small_inception(monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    monkeypatch.setattr(FeatureExtractorInceptionV3, 'INPUT_IMAGE_SIZE', 75)
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    monkeypatch.setenv('OMP_NUM_THREADS', '1')


def test_fid_table_rows_and_resume(tmp_path, ckpt_dir, weights, one_thread):
    g = torch.Generator().manual_seed(0)
    ref_images = (torch.rand(12, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    ref = F.features_to_stats(F.extract_features(F.Uint8Images(ref_images), ('64',), weights['random'], 'cpu')['64'])
    F.save_stats(tmp_path / 'ref.npz', ref)
    argv = ['-c', CONFIG, '--weights', ckpt_dir, '--out-dir', str(tmp_path / 'table'), '--ref-stats',
            str(tmp_path / 'ref.npz'), '--feature-extractor-weights', weights['random'], '--dims', '64',
            '--n-samples', '6', '--micro-batch', '3', '--rows', ROWS, *TINY]
    fid_table.main(argv)
    res = json.load(open(tmp_path / 'table' / 'fid_table.json'))
    assert [r['name'] for r in res['rows']] == ['ddpm-fixed_large-20', 'ddpm-fixed_small-5', 'ddim-5', 'dpm_solverpp-4']
    assert all(np.isfinite(r['fid']) and r['fid'] > 0 and r['n_samples'] == 6 for r in res['rows'])
    assert '--skip_type uniform --skip_steps 5' in res['rows'][1]['command'] and '--skip_type' not in res['rows'][0]['command']
    assert '--skip_type quad --skip_steps 4' in res['rows'][3]['command']
    table = open(tmp_path / 'table' / 'fid_table.md').read().splitlines()
    assert len(table) == 2 + 4 and table[2].startswith('| ddpm | fixed_large | 20 |')
    # a rerun finds every image on disk and reproduces the numbers
    npz = tmp_path / 'table' / 'ddim-5' / 'samples.npz'
    before = os.path.getmtime(tmp_path / 'table' / 'ddim-5' / '000000.png')
    fid_table.main(argv)
    again = json.load(open(tmp_path / 'table' / 'fid_table.json'))
    assert [r['fid'] for r in again['rows']] == pytest.approx([r['fid'] for r in res['rows']], rel=1e-6)
    assert os.path.getmtime(tmp_path / 'table' / 'ddim-5' / '000000.png') == before and npz.is_file()


def test_fid_table_in_stages(tmp_path, ckpt_dir, weights, one_thread):
    # rows sampled by separate `--stage sample` runs (as one process per GPU would), then scored together,
    # give the same table as one `--stage all` run; scoring a row that was never sampled is a one-line error
    from utils.errors import UserError
    g = torch.Generator().manual_seed(1)
    ref = F.features_to_stats(F.extract_features(F.Uint8Images((torch.rand(12, 1, 8, 8, generator=g) * 255).to(
        torch.uint8)), ('64',), weights['random'], 'cpu')['64'])
    F.save_stats(tmp_path / 'ref.npz', ref)
    common = ['-c', CONFIG, '--weights', ckpt_dir, '--ref-stats', str(tmp_path / 'ref.npz'),
              '--feature-extractor-weights', weights['random'], '--dims', '64', '--n-samples', '4',
              '--micro-batch', '2', *TINY]
    rows = 'ddim:-:3,ddpm:fixed_small:4'
    fid_table.main(common + ['--out-dir', str(tmp_path / 'one'), '--rows', rows])
    for row in rows.split(','):
        fid_table.main(common + ['--out-dir', str(tmp_path / 'staged'), '--rows', row, '--stage', 'sample',
                                 '--feature-extractor-weights', str(tmp_path / 'not-needed-to-sample.pth')])
    assert not (tmp_path / 'staged' / 'fid_table.json').exists()
    fid_table.main(common + ['--out-dir', str(tmp_path / 'staged'), '--rows', rows, '--stage', 'score'])
    one = json.load(open(tmp_path / 'one' / 'fid_table.json'))['rows']
    staged = json.load(open(tmp_path / 'staged' / 'fid_table.json'))['rows']
    assert [r['fid'] for r in staged] == pytest.approx([r['fid'] for r in one], rel=1e-6)
    assert [r['command'].split('--save_dir')[0] for r in staged] == [r['command'].split('--save_dir')[0] for r in one]
    with pytest.raises(UserError, match='no finished samples'):
        fid_table.main(common + ['--out-dir', str(tmp_path / 'staged'), '--rows', 'ddim:-:2', '--stage', 'score'])


def test_bad_rows_are_one_line(tmp_path, ckpt_dir, weights):
    from utils.errors import UserError
    with pytest.raises(UserError, match='not SAMPLER:VAR_TYPE:STEPS'):
        fid_table.main(['-c', CONFIG, '--weights', ckpt_dir, '--out-dir', str(tmp_path), '--ref-stats', 'x.npz',
                        '--rows', 'ddpm-100', *TINY])
