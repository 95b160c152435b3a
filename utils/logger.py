"""Run logging on the main process: a log file, stdout, TensorBoard scalars and a tqdm bar."""
import logging
import os
import sys

from tqdm import tqdm


class Logger:
    """Writes `EXP_DIR/output.log`, stdout and `EXP_DIR/tensorboard/`; a no-op on other processes."""

    def __init__(self, exp_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.tb = None
        self.bar = None
        if not enabled:
            return
        self.log = logging.getLogger(f'ddpm.{os.path.abspath(exp_dir)}')
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        fmt = logging.Formatter('%(asctime)s %(message)s', '%Y-%m-%d %H:%M:%S')
        for h in (logging.FileHandler(os.path.join(exp_dir, 'output.log')), logging.StreamHandler(sys.stdout)):
            h.setFormatter(fmt)
            self.log.addHandler(h)
        from torch.utils.tensorboard import SummaryWriter   # imported here: slow, main process only
        self.tb = SummaryWriter(os.path.join(exp_dir, 'tensorboard'))

    def info(self, msg: str):
        if self.enabled:
            self.log.info(msg)

    def scalars(self, stats: dict, step: int, prefix: str = 'train'):
        if not self.enabled:
            return
        for k, v in stats.items():
            self.tb.add_scalar(f'{prefix}/{k}', v, step)
        self.info(f'step {step}: ' + ', '.join(f'{k} {v:.4g}' for k, v in stats.items()))

    def progress(self, total: int, initial: int):
        # disable=None: a bar on a terminal, none in a pipe or log file (the log has the step lines)
        self.bar = tqdm(total=total, initial=initial, disable=None if self.enabled else True, dynamic_ncols=True,
                        desc='train')
        return self.bar

    def close(self):
        if self.tb is not None:
            self.tb.close()
        if self.enabled:
            for h in list(self.log.handlers):
                h.close()
                self.log.removeHandler(h)
