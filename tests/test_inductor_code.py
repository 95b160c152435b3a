"""bench/inductor_code.py: inductor's CUDA code for the UNet's sampling forward, written without a GPU."""
import os
import subprocess
import sys

import pytest
import torch

from models import build_model
from utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'ddpm_tiny.yaml')


def test_generated_code_keeps_every_linear_bias_in_its_gemm(tmp_path):
    # The tool runs inductor's CUDA lowering on this CPU machine (in a subprocess: it fakes torch.cuda). In the code
    # it writes, every linear layer is one addmm with its bias: AttnBlock's tokens are contiguous. With the
    # attempt-7 transposed tokens the qkv projection became a bare mm plus separate bias passes (bench/NOTES.md).
    # The ResBlocks' embedding projections are one addmm together (UNet.project_embedding).
    pytest.importorskip('triton')
    out = tmp_path / 'code.py'
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'inductor_code.py'), '--config', TINY,
                        '--batch', '4', '--out', str(out)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    src = out.read_text()
    model = build_model(load_config(TINY)['model'])
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert src.count('@triton.jit') > 10
    assert 'extern_kernels.mm(' not in src
    assert src.count('extern_kernels.addmm(') == n_linear - len(model.res_blocks) + 1
