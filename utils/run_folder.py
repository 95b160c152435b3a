"""The run folder EXP_DIR of a training run: a unique default name, checked before any work, one owner at a time.

The owner holds EXP_DIR/.lock, a file created atomically that names its process (pid@host). A second run into the
folder is refused while that process lives; the lock of a process that died (same host) is taken over.
"""
import atexit
import os
import socket
import time

from .errors import UserError

LOCK = '.lock'


def new_default_folder(root: str = 'runs') -> str:
    """Create and return runs/exp-YYYY-mm-dd-HH-MM-SS, or ...-2, -3, ... if a run started in the same second."""
    os.makedirs(root, exist_ok=True)
    base = os.path.join(root, time.strftime('exp-%Y-%m-%d-%H-%M-%S'))
    for k in range(1, 1000):
        path = base if k == 1 else f'{base}-{k}'
        try:
            os.mkdir(path)                      # atomic: two runs never get the same folder
            return path
        except FileExistsError:
            continue
    raise UserError(f"could not find a free run folder name under {root}; pass -e EXP_DIR")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(exp_dir: str):
    """Make EXP_DIR this process's: create EXP_DIR/.lock (released at exit) or refuse with one line."""
    os.makedirs(exp_dir, exist_ok=True)
    path = os.path.join(exp_dir, LOCK)
    me = f'{os.getpid()}@{socket.gethostname()}'
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    owner = f.read().strip()
            except OSError:
                owner = ''
            pid, _, host = owner.partition('@')
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                os.remove(path)                 # its process is gone: take over
                continue
            raise UserError(f"{exp_dir} is in use by another run (process {owner or 'unknown'}); wait for it to end "
                            f"or pass another -e EXP_DIR (if no such process runs, delete {path})") from None
        with os.fdopen(fd, 'w') as f:
            f.write(me + '\n')
        atexit.register(release, exp_dir)
        return
    raise UserError(f"could not take {path}; delete it if no run uses {exp_dir}")


def release(exp_dir: str):
    """Remove EXP_DIR/.lock if this process holds it."""
    path = os.path.join(exp_dir, LOCK)
    try:
        with open(path) as f:
            if f.read().strip() == f'{os.getpid()}@{socket.gethostname()}':
                os.remove(path)
    except OSError:
        pass
