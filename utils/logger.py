"""Run logging on the main process: a log file, stdout, TensorBoard scalars and images, and tqdm bars."""
import logging
import os
import sys

from tqdm import tqdm


class TqdmStream(logging.StreamHandler):
    """Log lines to stdout through tqdm.write, so a progress bar on the terminal is redrawn below them instead of
    being broken by them."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:
            self.handleError(record)


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
        for h in (logging.FileHandler(os.path.join(exp_dir, 'output.log')), TqdmStream(sys.stdout)):
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

    def image(self, tag: str, img, step: int):
        """A uint8 C×H×W image to TensorBoard (e.g. the sample grid)."""
        if self.enabled:
            self.tb.add_image(tag, img, step)

    def steps(self, what: str, total: int):
        """A transient bar for `total` steps of `what` (e.g. a sampling chain), or None on other processes."""
        if not self.enabled:
            return None
        return tqdm(total=total, desc=what, leave=False, disable=None, dynamic_ncols=True)

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
