"""Secret and personal files: created readable by their owner only, refused when others can read them.

The bus's ledger and gallery, the cloud's ledger and template store hold rider ids, accounts and
(encrypted) templates; keys sign fares and decrypt galleries. Each is created with mode 0600
before anything is written to it (SQLite gives its -wal and -shm files the database's mode), and a
file that group or others can read is refused at start with the command that fixes it (issue 19,
defect 14), whatever the process's umask.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class InsecureFileError(PermissionError):
    """A secret or personal file is readable by others; the message names it and the fix."""


def check_private(path: str | Path, what: str) -> None:
    """Raise :class:`InsecureFileError` if group or others may read or write ``path``."""
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    if mode & 0o077:
        raise InsecureFileError(
            f"{what} {path} has mode {mode:04o}: readable by others. It must be readable by its owner only: "
            f"chmod 600 {path}"
        )


def private_file(path: str | Path, what: str) -> None:
    """Before a database opens ``path``: create it empty with mode 0600 if missing, else check it."""
    if str(path) == ":memory:":
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        check_private(p, what)
    else:
        os.close(fd)
        os.chmod(p, 0o600)  # whatever the umask
