"""Writing small files (status, pid/state files) atomically under a private temporary name.

Owns one thing: `write_atomic_private(path, data)`. The temporary file is made by `tempfile.mkstemp` in
the target's folder (a fresh random name, created with O_EXCL and mode 0600, so a symlink or file planted
at a predictable name is never followed or overwritten), written, fsynced, then moved over the target with
`os.replace` (readers see the old file or the new one, never half of one). A symlink at the target itself
is replaced by the new file, not followed. No knowledge of what the files mean here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically, through a private temp file in the same folder.

    `mode` is the new file's permission bits (default 0600: owner only). The folder must exist.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
            os.fchmod(tmp.fileno(), mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
