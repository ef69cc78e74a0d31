"""Files of the collector's state folder: only their owner (root) may read them, whatever the
umask the collector was started with. They say which workloads are held and spool command
lines.

Modes are given at creation (the umask can only take bits away) and set again through the
descriptor, so no file is ever readable by others, not even for a moment; what an earlier
version left readable is made private when its folder is first used.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["open_appending", "private_folder", "write_private"]

_FILE_MODE = 0o600
_FOLDER_MODE = 0o700


def private_folder(folder: Path) -> Path:
    """`folder`, created if missing, 0700, with every file directly in it 0600."""
    folder.mkdir(mode=_FOLDER_MODE, parents=True, exist_ok=True)
    os.chmod(folder, _FOLDER_MODE)
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and (
                    stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode) & 0o077):
                os.chmod(entry.path, _FILE_MODE, follow_symlinks=False)
    return folder


def open_appending(path: Path) -> BinaryIO:
    """`path` opened to append to, created 0600 and set so if it existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
                 _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` at once (a crash leaves the old or the new file, whole),
    0600. The temporary file is made anew: one left by a crash may be open in another
    process since an earlier version created it readable."""
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
