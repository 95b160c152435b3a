"""Files written atomically, and the image file types this repo reads.

Every file this repo writes (configs, checkpoints, images, statistics, results) goes through `atomic_write`: a
hidden temporary name in the same folder, flushed and fsynced, then renamed into place, so a killed process leaves
either the old file or the new one, never half of one.
"""
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
