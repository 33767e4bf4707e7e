"""Copying a directory tree fast: reflinks where the file system has them, else a plain copy.

A writable input is a copy of the producer's artifact (``shared.launching``). Most of
the time that copy should cost nothing: on a file system with reflinks (XFS, Btrfs,
bcachefs, ZFS 2.2 with block cloning, overlayfs over those) a file is cloned by sharing
its blocks, copy-on-write. Three ways, best first:

1. ``cp --reflink=auto -a`` (GNU coreutils): clones each file where it can, copies
   where it cannot, keeps modes, times, symlinks and hard links; one process per tree.
2. Python, per file: the ``FICLONE`` ioctl (a reflink), else ``os.copy_file_range``
   (an in-kernel copy, server-side on NFS 4.2), else ``shutil.copyfileobj``.
3. There is no third: a tree that cannot be copied is an ``ArtifactStoreError``.

Symlinks are copied as links, never followed: an artifact is untrusted content, and a
link in it must not make the step runner copy what it points to.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ArtifactStoreError, StoreFullError

#: ``FICLONE`` from ``linux/fs.h``: clone a whole file (``_IOW(0x94, 9, int)``).
FICLONE = 0x40049409
#: Errors that mean "this file system cannot clone/copy_file_range here": fall back.
_NOT_HERE = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}
)
#: Bytes per ``copy_file_range`` call: large enough to amortise the syscall.
_CHUNK = 1 << 30


@dataclass(frozen=True, kw_only=True)
class CopyReport:
    """How a tree was copied."""

    method: str
    """``cp``, ``python``."""
    files: int = 0
    """Files copied (``python`` only; ``cp`` does not say)."""
    cloned: int = 0
    """Of those, how many by reflink (``python`` only)."""


def copy_tree(source: Path, target: Path, *, use_cp: bool = True) -> CopyReport:
    """Copy everything inside ``source`` into the existing directory ``target``.

    ``target`` keeps its own mode (an output directory's); what is inside keeps
    the modes it had. Raises ``StoreFullError`` when the store is full and
    ``ArtifactStoreError`` for any other failure.
    """
    if not source.is_dir():
        raise ArtifactStoreError(f"cannot copy {source}: it is not a directory")
    cp = shutil.which("cp") if use_cp else None
    if cp is not None:
        result = subprocess.run(
            [cp, "--reflink=auto", "-a", "--no-target-directory", f"{source}/.", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 0:
            return CopyReport(method="cp")
        if "No space left" in result.stderr or "Disk quota" in result.stderr:
            raise StoreFullError(f"the artifact store is full: no space left copying {source}")
        if "unrecognized option" not in result.stderr and "invalid option" not in result.stderr:
            raise ArtifactStoreError(
                f"copying {source} to {target} failed: {result.stderr.strip()[:500]}"
            )
        # Not GNU cp (busybox): copy in Python instead.
    try:
        return _copy_python(source, target)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError(
                f"the artifact store is full: no space left copying {source}"
            ) from e
        raise ArtifactStoreError(f"copying {source} to {target} failed: {e}") from e


def _copy_python(source: Path, target: Path) -> CopyReport:
    files = cloned = 0
    seen: dict[tuple[int, int], str] = {}  # (device, inode) → first copy: keeps hard links
    for root, dirs, names in os.walk(source):
        rel = os.path.relpath(root, source)
        out = target if rel == "." else target / rel
        for name in dirs:
            src = os.path.join(root, name)
            info = os.lstat(src)
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(src), out / name)
            else:
                os.mkdir(out / name)
        for name in names:
            src = os.path.join(root, name)
            dst = str(out / name)
            info = os.lstat(src)
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(src), dst)
                continue
            if not stat.S_ISREG(info.st_mode):
                continue  # sockets, fifos, devices: nothing a build hands on
            identity = (info.st_dev, info.st_ino)
            if info.st_nlink > 1 and identity in seen:
                os.link(seen[identity], dst)
                continue
            seen[identity] = dst
            cloned += _copy_file(src, dst, info.st_mode)
            files += 1
            shutil.copystat(src, dst, follow_symlinks=False)
        # Directories that are symlinks were copied as links above: do not walk into them.
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    for root, dirs, _ in os.walk(source):
        for name in dirs:
            src = os.path.join(root, name)
            if not os.path.islink(src):
                rel = os.path.relpath(src, source)
                shutil.copystat(src, target / rel, follow_symlinks=False)
    return CopyReport(method="python", files=files, cloned=cloned)


def _copy_file(src: str, dst: str, mode: int) -> int:
    """Copy one regular file; 1 if it was cloned (a reflink), else 0."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        os.fchmod(fout.fileno(), stat.S_IMODE(mode))
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return 1
        except OSError as e:
            if e.errno not in _NOT_HERE:
                raise
        size = os.fstat(fin.fileno()).st_size
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), min(_CHUNK, size - copied))
                if n == 0:
                    break
                copied += n
        except OSError as e:
            if e.errno not in _NOT_HERE:
                raise
            fin.seek(copied)
            fout.seek(copied)
            shutil.copyfileobj(fin, fout, 1 << 20)
        return 0
