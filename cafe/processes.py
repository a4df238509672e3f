"""Child processes under a long TMPDIR. A Unix socket's path is limited to 107 bytes, and multiprocessing
puts its sockets (the forkserver's, and the listener that hands DataLoader workers' tensors over) in its
temporary folder under TMPDIR: under a long TMPDIR a pool fails with "AF_UNIX path too long" and DataLoader
workers hang. :func:`short_socket_dir` moves that folder somewhere short first."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from multiprocessing import util

# multiprocessing appends names like "/pymp-XXXXXXXX/listener-XXXXXXXX" (about 35 bytes) to the folder
MAX_DIR_CHARS = 64


def short_socket_dir() -> str:
    """Make multiprocessing keep its sockets in a folder with a path short enough for a Unix socket (a private
    folder under /tmp when TMPDIR is long; removed at exit); returns the folder."""
    config = multiprocessing.current_process()._config
    current = config.get("tempdir")
    if current and len(current) <= MAX_DIR_CHARS:
        return current
    if current is None and len(tempfile.gettempdir()) + 16 <= MAX_DIR_CHARS:
        return util.get_temp_dir()
    base = "/tmp" if os.access("/tmp", os.W_OK) else tempfile.gettempdir()
    path = tempfile.mkdtemp(prefix="pymp-", dir=base)
    util.Finalize(None, shutil.rmtree, args=[path], kwargs={"ignore_errors": True}, exitpriority=-100)
    config["tempdir"] = path
    return path
