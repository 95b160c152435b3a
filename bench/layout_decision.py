"""Does torch.compile (inductor) run this repo's UNets channels_last inside the compiled graph?

    python bench/layout_decision.py          # CPU is enough: it asks inductor's own heuristic

Inductor converts a convolution-heavy graph to channels_last (its "layout optimization") unless a heuristic
says no. This prints that decision for each config's UNet, for a training graph and an inference graph,
without and with `force_layout_optimization` (what `train.compile_force_layout_opt true` sets). The heuristic
is `torch._inductor.graph.GraphLowering.decide_layout_opt`, a private function: the script reads it as it is in
the installed torch. oneDNN is switched off while asking, because on a CPU with oneDNN inductor always says yes.
"""
import glob
import os
import sys

import torch
from torch._inductor import config as inductor_config
from torch._inductor.graph import GraphLowering
from torch.fx.experimental.proxy_tensor import make_fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from models import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402


def main():
    print(f'torch {torch.__version__}')
    for path in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.yaml'))):
        cfg = load_config(path)
        model = build_model(cfg['model'])
        size = cfg['data']['img_size']
        x, t = torch.randn(1, cfg['data']['img_channels'], size, size), torch.zeros(1, dtype=torch.long)
        gm = make_fx(lambda x, t: model(x, t))(x, t)
        with torch.backends.mkldnn.flags(enabled=False):
            for force in (False, True):
                with inductor_config.patch(force_layout_optimization=force):
                    train = GraphLowering.decide_layout_opt(gm, is_inference=False)
                    infer = GraphLowering.decide_layout_opt(gm, is_inference=True)
                print(f'{os.path.basename(path):24s} force {str(force):5s}  training graph: '
                      f'{"channels_last" if train else "NCHW"}, inference graph: {"channels_last" if infer else "NCHW"}')


if __name__ == '__main__':
    main()
