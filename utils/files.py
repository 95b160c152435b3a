"""Files written atomically, and the image file types this repo reads.

Every file this repo writes (configs, checkpoints, images, statistics, results) goes through `atomic_write`: a
hidden temporary name in the same folder, flushed and fsynced, then renamed into place, so a killed process leaves
either the old file or the new one, never half of one.
"""
import hashlib
import os

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.webp')     # what image folders and sample folders are read from


def temp_name(path: str) -> str:
    """A hidden temporary name beside `path`, ending in .tmp (so globs for the real extension skip it)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f'.{name}.{os.getpid()}.tmp')


def atomic_write(path: str, write, mode: str = 'wb', fsync: bool = True):
    """Call `write(f)` on a temporary file opened with `mode`, then move it to `path` (which is the old file or the
    new one at every moment). The temporary file is removed if `write` fails. `fsync`: the data reaches the disk
    before the rename (survives a power loss, not only a killed process); off for many small files (samples)."""
    tmp = temp_name(path)
    try:
        with open(tmp, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_writable(path: str, what: str, folder: bool = False):
    """A one-line UserError unless `path` can be written: a file (its folder exists and is writable, or can be
    made) or, with `folder`, a folder that exists or can be made. Checked before the work whose result goes there."""
    from utils.errors import UserError
    path = os.path.abspath(path)
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path} is a file, not a folder; pass a folder (it is created if missing)")
    if not folder and os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder; pass a file name")
    parent = path if folder else os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{what} {path}: {parent} is a file, so nothing can be made under it; pass another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {parent} is not writable (permissions or a read-only file system); "
                        f"pass a path you can write")


def sha256(path: str) -> str:
    """The hex sha256 of a file's bytes (its identity, whatever its name)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            h.update(block)
    return h.hexdigest()
