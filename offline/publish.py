"""Atomic publishing of an output directory (dataset, run, bundle).

Everything the offline jobs write is first written into a hidden sibling of its
destination (``.<name>.tmp-XXXX``), and only a complete directory is put in place.
Putting it in place never leaves a moment without a complete directory at the
destination, so a reader (a server watching a bundle, a user listing runs) sees the
old directory or the new one, never neither and never a mix:

- no directory there yet: one ``rename``;
- one there already: the two are exchanged in one step (Linux ``renameat2`` with
  ``RENAME_EXCHANGE``) and only then is the old one, now at the temporary name,
  removed. Where the exchange is not available (another OS, a file system without
  it) the old directory is renamed aside and the new one renamed in (a short window
  without it), and put back if that second rename fails.

A writer killed at any point leaves the destination as it was or complete, plus at
most a hidden ``.<name>.tmp-XXXX`` sibling to delete.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2():  # noqa: ANN202 - a ctypes function or None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not glibc >= 2.28
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swaps the paths a and b in one atomic step; False where the platform or the file
    system cannot (nothing has changed then). Other failures raise OSError."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish(staged: Path, out: Path) -> None:
    """Puts the complete directory `staged` at `out`, replacing what is there (see the
    module docstring for why there is never a moment without a complete `out`)."""
    if not os.path.lexists(out):
        os.rename(staged, out)
        return
    if exchange(staged, out):
        _remove(staged)  # the old directory, now at the temporary name
        return
    old = out.parent / f"{staged.name}.old"
    os.rename(out, old)
    try:
        os.rename(staged, out)
    except OSError:
        os.rename(old, out)  # put the previous directory back
        raise
    _remove(old)


def staging_dir(out: Path) -> Path:
    """A fresh hidden sibling of `out` to write into (readable by others: a server may
    run as another user than the writer)."""
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700
    return tmp


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Write into the yielded directory; when the block ends without an error it is
    published at `out`, when it raises it is removed and `out` is untouched."""
    out = Path(out)
    tmp = staging_dir(out)
    try:
        yield tmp
        publish(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
