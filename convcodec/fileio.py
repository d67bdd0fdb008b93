"""Safe output: write to a temporary file beside the target, then rename.

A failed run leaves nothing behind and never touches an existing file; the
input is never the output."""
from __future__ import annotations

import contextlib
import os
import tempfile


class OutputError(Exception):
    pass


def check_not_input(out_path: str, in_paths) -> None:
    if not os.path.exists(out_path):
        return
    for p in in_paths:
        if p and os.path.exists(p) and os.path.samefile(p, out_path):
            raise OutputError(f"{out_path}: output would overwrite the input")


@contextlib.contextmanager
def atomic_output(path: str):
    """Yields a binary file object; on success it replaces ``path`` atomically."""
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise OutputError(f"{path}: directory {d} does not exist")
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory")
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".part")
    try:
        # mkstemp makes the file private (0600); give it the permissions a
        # plain open() would (0666 minus the umask), like every other tool.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
