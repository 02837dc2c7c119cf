"""The files beside an SQLite database, and what each kind of opening needs of them.

In WAL mode a database `runs.db` comes with `runs.db-wal` (commits not yet folded into the
file) and `runs.db-shm` (the index of the WAL that connections share), which SQLite
creates in the database's directory when the first connection opens and deletes when the
last one closes; the writer adds `runs.db.lock`. Two traps follow, and both are avoided
here, before SQLite is asked anything:

- SQLite opens a file it cannot write read-only without saying so, and then creates the
  `-wal` and `-shm` files with the database's own permissions. Opened for writing, a
  database at mode 0444 would leave them behind at 0444; once the database's permissions
  are fixed, those files keep every later writer refusing. So a writer checks the
  permissions first and names the file, or directory, that is in the way.
- A reader (`mode=ro`) cannot create the `-shm` file in a read-only directory or mount,
  and one it creates beside a database it cannot write is a file at 0444 that the
  database's writer cannot use. Without a `-wal` file, though, the database file holds
  every commit, so the reader opens it `immutable=1`, which needs no `-shm`. The price: an
  immutable reader does not see commits that a writer starting after it makes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from aruntime.errors import StoreReadOnlyError

__all__ = ["IMMUTABLE", "check_writable", "immutable_allowed", "reader_mode", "sidecar"]


def sidecar(path: Path, suffix: str) -> Path:
    """The file beside the database `path` with `suffix` (`-wal`, `-shm`, `.lock`)."""
    return path.with_name(path.name + suffix)


def check_writable(path: Path) -> None:
    """Refuse, naming the culprit, a database that SQLite could only open read-only.

    Raises:
        StoreReadOnlyError: the database, its `-wal` or `-shm` file exists and cannot be
            written, or its directory cannot be written and a file must be created there.
    """
    wal, shm = sidecar(path, "-wal"), sidecar(path, "-shm")
    if path.exists() and not _writable(path):
        raise StoreReadOnlyError(
            f"{path} cannot be written ({_why(path)}); make it writable, or open the store "
            "with read_only=True to inspect it"
        )
    for beside in (wal, shm):
        if beside.exists() and not _writable(beside):
            raise StoreReadOnlyError(
                f"{beside} cannot be written ({_why(beside)}), so neither can {path.name}; "
                "it was left by a process that could not write the database: when no process "
                "has the database open, delete it or make it writable"
            )
    missing = [p.name for p in (path, wal, shm, sidecar(path, ".lock")) if not p.exists()]
    if missing and not _writable(path.parent):
        raise StoreReadOnlyError(
            f"the directory {path.parent} cannot be written ({_why(path.parent)}), and the "
            "store needs to create "
            f"{', '.join(missing)} in it; make it writable, or open the store with "
            "read_only=True to inspect the database"
        )


def reader_mode(path: Path) -> str:
    """The URI parameters of a read-only connection to `path`: `mode=ro`, or `mode=ro&
    immutable=1` when a `-shm` file cannot be made that a writer could use, and there is no
    WAL to read.

    Raises:
        StoreReadOnlyError: the `-wal` file holds commits, and the `-shm` file needed to read
            them is missing and cannot be created.
    """
    wal, shm = sidecar(path, "-wal"), sidecar(path, "-shm")
    if shm.exists():
        return "mode=ro"
    if not _has_commits(wal):
        return "mode=ro" if _writable(path) and _writable(path.parent) else IMMUTABLE
    if not _writable(path.parent):
        raise StoreReadOnlyError(
            f"{wal} holds commits that are not in {path.name} yet, and reading them needs "
            f"{shm.name}, which is missing and cannot be created in {path.parent}; open the "
            "database once where its directory can be written (the last connection to close "
            "folds the WAL into the file), or copy the database and its -wal file elsewhere"
        )
    return "mode=ro"


IMMUTABLE = "mode=ro&immutable=1"
"""The URI parameters of a reader that needs no `-shm` file and ignores any WAL."""


def immutable_allowed(path: Path) -> bool:
    """True if an immutable reader of `path` misses no commit: there is no WAL to read."""
    return not _has_commits(sidecar(path, "-wal"))


def _has_commits(wal: Path) -> bool:
    try:
        return wal.stat().st_size > 0
    except FileNotFoundError:
        return False


def _writable(path: Path) -> bool:
    # access(2) answers for this process (root included) and says no on a read-only mount.
    flags = os.W_OK | (os.X_OK if path.is_dir() else 0)
    return os.access(path, flags, effective_ids=os.access in os.supports_effective_ids)


def _why(path: Path) -> str:
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return "it is on a read-only mount"
    return f"mode {stat.S_IMODE(path.stat().st_mode):04o}"
