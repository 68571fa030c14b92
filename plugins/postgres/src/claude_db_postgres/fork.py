"""Forking a running local PostgreSQL server: a consistent base backup, cloned file by file.

Between ``pg_backup_start`` and ``pg_backup_stop`` (non-exclusive, on one admin
connection: if this process dies, the server ends the backup itself) the data directory
is copied while the server keeps serving; full-page writes are forced meanwhile, so pages
a client changed during the copy are repaired by WAL replay. Then the WAL from the
backup's start on and ``backup_label`` are added: the copy starts with a short crash
recovery to a consistent point. Each file is a copy-on-write clone (``FICLONE``) where the
filesystem has them (XFS with reflink, btrfs), else a plain copy.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from pathlib import Path

import psycopg

from claude_db.errors import ClaudeDbError
from claude_db.faults import checkpoint

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
#: no clone on this filesystem (or not between these two): copy instead
NO_CLONE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS}
#: what a base backup leaves out (pg_basebackup's list): the server's own runtime files,
#: and the contents of directories that are rebuilt at start
SKIP_FILES = {"postmaster.pid", "postmaster.opts", "backup_label", "tablespace_map",
              "backup_label.old", "tablespace_map.old", "pg_internal.init"}
EMPTY_DIRS = {"pg_wal", "pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial",
              "pg_snapshots", "pg_subtrans"}
SEGMENT = re.compile(r"^[0-9A-F]{24}$")
START_FILE = re.compile(r"^START WAL LOCATION: .* \(file ([0-9A-F]{24})\)$", re.MULTILINE)


def copy_running(admin_user: str, source: Path, socket_dir: Path, port: int,
                 datadir: Path) -> str:
    """Fill ``datadir`` (not there yet) with a consistent copy of the running server of data
    directory ``source``; return ``reflink`` or ``copy``, how its files were made."""
    try:
        return _copy_running(admin_user, source, socket_dir, port, datadir)
    except psycopg.Error as exc:
        raise ClaudeDbError(f"fork: the base backup of the running server failed: "
                            f"{str(exc).strip().splitlines()[0]}") from None


def _copy_running(admin_user: str, source: Path, socket_dir: Path, port: int,
                  datadir: Path) -> str:
    copier = _Copier()
    with psycopg.connect(host=str(socket_dir), port=port, user=admin_user, dbname="postgres",
                         autocommit=True, connect_timeout=5) as conn:
        new_api = conn.info.server_version >= 150000  # renamed in 15
        start = "pg_backup_start(%s, true)" if new_api else "pg_start_backup(%s, true, false)"
        conn.execute(f"SELECT {start}", ["claude-db fork"])
        checkpoint("fork-backup-started")
        copier.tree(source, datadir, top=True)
        checkpoint("fork-copied")
        stop = "pg_backup_stop(false)" if new_api else "pg_stop_backup(false)"
        row = conn.execute(
            f"SELECT labelfile, spcmapfile, pg_walfile_name(lsn) FROM {stop}"
        ).fetchone()
    assert row is not None
    label, spcmap, last = row
    # the WAL from the backup's start to its end (the stop switched to a new segment, so
    # the last one is complete). Not the others: old ones are not needed, and the names
    # after it are recycled segments waiting for reuse (up to max_wal_size of them)
    match = START_FILE.search(label)
    if match is None:
        raise ClaudeDbError(f"fork: unexpected backup label from the server: {label!r}")
    first = match.group(1)
    wal = source / "pg_wal"
    names = sorted(os.listdir(wal))
    if first not in names:
        raise ClaudeDbError(f"fork: WAL segment {first} was recycled during the copy; try again")
    for name in names:
        if (SEGMENT.match(name) and first <= name <= last) or name.endswith(".history"):
            copier.file(wal / name, datadir / "pg_wal" / name)
    (datadir / "backup_label").write_text(label)
    if spcmap:
        (datadir / "tablespace_map").write_text(spcmap)
    return "reflink" if copier.cloned else "copy"


class _Copier:
    """Copies files as clones while the filesystem takes them, else plainly; a file that
    vanishes meanwhile (a dropped table, a temporary file) is left out, as pg_basebackup
    does: WAL replay makes the data directory right."""

    def __init__(self) -> None:
        self.cloned: bool | None = None  # None: nothing tried yet

    def tree(self, source: Path, dest: Path, top: bool = False) -> None:
        dest.mkdir(mode=0o700)
        try:
            entries = list(os.scandir(source))
        except FileNotFoundError:  # a dropped database's directory
            return
        for entry in entries:
            if entry.name in SKIP_FILES or entry.name.startswith("pgsql_tmp"):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if is_dir:
                if top and entry.name in EMPTY_DIRS:
                    (dest / entry.name).mkdir(mode=0o700)
                    for sub in ("archive_status", "summaries"):  # pg_wal's own
                        if (Path(entry.path) / sub).is_dir():
                            (dest / entry.name / sub).mkdir(mode=0o700)
                else:
                    self.tree(Path(entry.path), dest / entry.name)
            elif entry.is_symlink():  # a tablespace: sessions make none
                raise ClaudeDbError(f"fork: {entry.path} is a link (a tablespace?): "
                                    "not supported")
            else:
                self.file(Path(entry.path), dest / entry.name)

    def file(self, source: Path, dest: Path) -> None:
        try:  # never through a link the server's user put there since the scan (as root)
            src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ClaudeDbError(f"fork: {source} is a link: not copied") from None
            raise
        try:
            info = os.fstat(src)
            if not stat.S_ISREG(info.st_mode):
                raise ClaudeDbError(f"fork: {source} is not a regular file: not copied")
            mode = stat.S_IMODE(info.st_mode)
            out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            try:
                if self.cloned is not False and self._clone(src, out):
                    return
                while os.copy_file_range(src, out, 1 << 30):  # in the kernel, as cp does
                    pass
            finally:
                os.close(out)
        finally:
            os.close(src)

    def _clone(self, src: int, out: int) -> bool:
        try:
            fcntl.ioctl(out, FICLONE, src)
        except OSError as exc:
            if exc.errno not in NO_CLONE or self.cloned:
                raise
            self.cloned = False
            return False
        self.cloned = True
        return True
