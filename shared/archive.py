"""Moving an artifact's directory in and out of the store as tar, safely, and measuring it.

Steps never tar anything: a step writes its output directory in place and the
next step mounts that same directory (DESIGN.md, "Why subpaths of one claim").
Tar is only how an artifact crosses the store's edge: a local directory
uploaded as a build's input, an output downloaded or shipped elsewhere. An
archive coming in was made by whoever sends it, so this module is where
DESIGN.md's invariant 4 is kept: every entry is checked before it is written,
and nothing of a refused archive is left behind.

What an artifact may hold, in all three directions: regular files, directories
and symbolic links that stay inside it. Devices, fifos and sockets are refused
(:class:`~shared.errors.ArchiveError`) by :func:`stream_out`, :func:`stream_in`
and :func:`tree_digest` alike, so what goes out can always come back in, and
the digest describes exactly what travels.

Archive layout written by :func:`stream_out`: uncompressed POSIX.1-2001 (PAX)
tar; entry names relative to the artifact with no leading ``./`` and no entry
for the root itself (``bin/tool``, ``bin/`` for a directory, as tar writes
directories); entries in :func:`tree_digest` order; mtimes in whole seconds;
owner and group zeroed, so the same tree gives the same bytes on any node.

Why not ``tarfile``'s own ``extractall(filter="data")``: it arrived only in
3.11.4, it strips a leading ``/`` where we refuse the entry, and it checks each
link only when it is written, so a link that is harmless on its own can escape
once a later link changes what its path means (the kind of bypass CPython fixed
in 2025, CVE-2025-4517 among them).
:func:`stream_in` refuses rather than repairs, never writes through a link, and
checks every link again once the whole tree is in place.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, Self

from shared.errors import ArchiveError, ArtifactStoreError, JetBridgeError, StoreFullError

if TYPE_CHECKING:
    from _typeshed import SupportsRead

__all__ = [
    "STAGING_PREFIX",
    "ArchiveStats",
    "TreeDigest",
    "stream_in",
    "stream_out",
    "tree_digest",
]

#: :func:`stream_in` builds the tree in a sibling directory whose name starts with
#: this, then renames it into place. One left behind is a ``stream_in`` cut short
#: by a crash: the reaper's scan of the store may remove it.
STAGING_PREFIX = ".jetbridge-incoming-"

# Large enough that copying costs few system calls, small enough that a dozen
# concurrent transfers in one function instance stay well inside its memory.
_CHUNK = 1024 * 1024

# Bumped whenever the digest's input format changes: digests are stored in the
# artifacts table, and two formats must never produce comparable values.
_DIGEST_FORMAT = b"jetbridge-tree-digest-v1\0"

# What stream_in gives every directory: readable by the step pods that mount
# the artifact, writable by its owner so the reaper can always delete inside it.
_DIR_MODE = 0o755

_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_GZIP_MAGIC = b"\x1f\x8b"

# What reading a bad archive raises: tarfile's errors, and the decompressors' for
# a stream that is cut short (EOFError), damaged (zlib.error) or fails its
# checksum (BadGzipFile, an OSError, which is why OSError in general is not here:
# the caller's own stream failing is not the archive's fault).
_BAD_ARCHIVE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


@dataclass(frozen=True, kw_only=True)
class ArchiveStats:
    """What :func:`stream_in` wrote."""

    entries: int
    """Archive entries written: files, directories and links (the root's own entry included)."""
    bytes: int
    """Bytes of regular-file content written (a hard link adds none); not the archive's size."""


@dataclass(frozen=True, kw_only=True)
class TreeDigest:
    """The identity of a tree's content, as recorded in an artifact's row."""

    size: int
    """Total bytes of regular files; a file with two hard links counts twice."""
    files: int
    """Number of regular files (paths, not inodes)."""
    sha256: str
    """Hex digest over relative paths, entry kinds, executable bits, contents and link targets."""


# ---------------------------------------------------------------- walking a tree


@dataclass(frozen=True, slots=True)
class _Entry:
    rel: str
    """'/'-separated path below the root, as it appears in archives and digests."""
    name: str
    path: str
    stat: os.stat_result
    """From lstat: a symbolic link is described, never followed."""


def _walk(root: Path) -> Iterator[_Entry]:
    """Every entry below ``root``, depth first, siblings sorted by the bytes of their names.

    Iterative rather than recursive so that a tree deeper than Python's recursion
    limit is no problem; it holds only the siblings still to visit along the way down.
    Special files raise :class:`ArchiveError`; read failures :class:`ArtifactStoreError`.
    """

    def children(rel: str, path: str) -> list[_Entry]:
        try:
            with os.scandir(path) as it:
                found = [
                    _Entry(
                        rel=f"{rel}/{e.name}" if rel else e.name,
                        name=e.name,
                        path=e.path,
                        stat=e.stat(follow_symlinks=False),
                    )
                    for e in it
                ]
        except OSError as e:
            raise ArtifactStoreError(f"could not read directory {path}: {e.strerror}") from e
        # Sort on bytes, not str: the order must not depend on the locale or on
        # how undecodable names were escaped. Reversed, as the stack pops from the end.
        found.sort(key=lambda entry: os.fsencode(entry.name), reverse=True)
        return found

    stack = children("", os.fspath(root))
    while stack:
        entry = stack.pop()
        mode = entry.stat.st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise ArchiveError(
                f"{entry.path} is a {_kind_of_mode(mode)}; an artifact may hold only regular "
                "files, directories and symbolic links"
            )
        yield entry
        if stat.S_ISDIR(mode):
            stack.extend(children(entry.rel, entry.path))


def _kind_of_mode(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return f"special file (mode {mode:o})"


def _read_link(entry: _Entry) -> str:
    try:
        return os.readlink(entry.path)
    except OSError as e:
        raise ArtifactStoreError(f"could not read symbolic link {entry.path}: {e.strerror}") from e


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open a file the walk saw as regular, refusing it if it has become anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ArtifactStoreError(f"could not open {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise ArtifactStoreError(f"could not stat {path}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ArtifactStoreError(f"{path} stopped being a regular file while it was read")
    return fd, st


# ---------------------------------------------------------------- tree_digest


def tree_digest(directory: Path) -> TreeDigest:
    """Measure ``directory`` and digest its content, independently of where it lives.

    The digest covers, for each entry in a fixed order (depth first, siblings
    sorted by name bytes): its path relative to ``directory``, its kind
    (directory, regular file, symbolic link), for a file whether its owner may
    execute it and the SHA-256 of its content, for a link its target. It ignores
    mtimes, owners and the other mode bits, which :func:`stream_in` does not
    carry either: a tree and its round trip through tar have the same digest.

    File contents are hashed in chunks, so memory stays bounded whatever their size.
    Raises :class:`ArchiveError` on a special file, :class:`ArtifactStoreError` when
    something cannot be read.
    """
    tree = hashlib.sha256(_DIGEST_FORMAT)
    size = files = 0
    for entry in _walk(directory):
        # Paths and link targets cannot contain NUL, and every record starts with
        # a one-byte tag that fixes its shape: the encoding is unambiguous.
        name = os.fsencode(entry.rel)
        if stat.S_ISDIR(entry.stat.st_mode):
            tree.update(b"d" + name + b"\0")
        elif stat.S_ISLNK(entry.stat.st_mode):
            tree.update(b"l" + name + b"\0" + os.fsencode(_read_link(entry)) + b"\0")
        else:
            content, length, executable = _digest_file(entry.path)
            tree.update((b"x" if executable else b"f") + name + b"\0" + content)
            size += length
            files += 1
    return TreeDigest(size=size, files=files, sha256=tree.hexdigest())


def _digest_file(path: str) -> tuple[bytes, int, bool]:
    """SHA-256 of a file's content, its length and whether its owner may execute it."""
    fd, st = _open_regular(path)
    content = hashlib.sha256()
    length = 0
    try:
        while chunk := os.read(fd, _CHUNK):
            content.update(chunk)
            length += len(chunk)
    except OSError as e:
        raise ArtifactStoreError(f"could not read {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    return content.digest(), length, bool(st.st_mode & stat.S_IXUSR)


# ---------------------------------------------------------------- tar streams


class _StreamingTarFile(tarfile.TarFile):
    """A TarFile that does not keep a list of every member it has read or written.

    ``TarFile`` appends each member to ``self.members`` so that it can be looked up
    later; in streaming mode nothing ever looks, and on a tree of millions of
    files that list alone would take gigabytes.
    """

    members: list[tarfile.TarInfo]

    def next(self) -> tarfile.TarInfo | None:
        member = super().next()
        self.members.clear()
        return member

    def addfile(self, tarinfo: tarfile.TarInfo, fileobj: SupportsRead[bytes] | None = None) -> None:
        super().addfile(tarinfo, fileobj)
        self.members.clear()


class _OneWayStream:
    """The file protocol ``tarfile`` and ``gzip`` are typed against, for a stream.

    Streaming never seeks, and each adapter below goes one way only; the methods
    a subclass does not override say so if anything calls them.
    """

    def read(self, size: int = -1, /) -> bytes:
        raise OSError(errno.EBADF, "this stream is write-only")

    def write(self, data: bytes, /) -> int:
        raise OSError(errno.EBADF, "this stream is read-only")

    def tell(self) -> int:
        raise OSError(errno.ESPIPE, "this stream has no position")

    def seek(self, pos: int, /) -> int:
        raise OSError(errno.ESPIPE, "this stream is not seekable")

    def close(self) -> None:
        """The caller owns the underlying stream and closes it."""


class _CountingWriter(_OneWayStream):
    """The caller's stream, counting what goes through it.

    Whatever ``fileobj.write`` raises reaches the caller unchanged: the stream is
    theirs (an HTTP response, an upload) and so is deciding what its failure means.
    """

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self.count = 0

    def write(self, data: bytes, /) -> int:
        self._sink.write(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count


class _Unread(_OneWayStream):
    """The caller's stream with the bytes already read to sniff it put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if size < 0:
            data, self._head = self._head + self._rest.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        if len(data) < size:
            data += self._rest.read(size - len(data))
        return data


class _SourceFile:
    """A file being archived: exactly ``size`` bytes, or an :class:`ArtifactStoreError`.

    tarfile would report a file that shrank mid-copy with a bare ``OSError``,
    indistinguishable from a failure of the caller's stream; this says what happened.
    """

    def __init__(self, fd: int, path: str, size: int) -> None:
        self._fd = fd
        self._path = path
        self._remaining = size

    def read(self, size: int = -1, /) -> bytes:
        wanted = self._remaining if size < 0 else min(size, self._remaining)
        parts: list[bytes] = []
        got = 0
        while got < wanted:
            try:
                data = os.read(self._fd, wanted - got)
            except OSError as e:
                raise ArtifactStoreError(f"could not read {self._path}: {e.strerror}") from e
            if not data:
                raise ArtifactStoreError(f"{self._path} shrank while it was being archived")
            parts.append(data)
            got += len(data)
        self._remaining -= got
        return b"".join(parts)


def stream_out(directory: Path, fileobj: BinaryIO) -> int:
    """Write the content of ``directory`` to ``fileobj`` as an uncompressed PAX tar stream.

    Entries are named relative to ``directory`` with no leading ``./`` and no
    entry for ``directory`` itself; they come in :func:`tree_digest` order with
    each directory before what it holds. Files keep their permission bits (not
    setuid, setgid or sticky) and their mtime in whole seconds; owner and group
    are zeroed. Symbolic links are archived as links, never followed; a file with
    several hard links inside the tree is stored once and linked after. The same
    tree therefore gives the same bytes wherever it lives, apart from mtimes.

    Streams: one chunk of one file in memory at a time, whatever the tree's size.
    Returns the number of bytes written to ``fileobj``.

    Raises :class:`ArchiveError` on a special file (device, fifo, socket) and
    :class:`ArtifactStoreError` when the tree cannot be read; what ``fileobj``
    raises passes through. After a failure what was written is not a whole
    archive (it lacks tar's end-of-archive marker), and :func:`stream_in` refuses it.
    """
    sink = _CountingWriter(fileobj)
    first_path_of_inode: dict[tuple[int, int], str] = {}
    with _StreamingTarFile.open(
        fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8"
    ) as tar:
        for entry in _walk(directory):
            info = tarfile.TarInfo(entry.rel)
            info.mtime = int(entry.stat.st_mtime)
            info.mode = stat.S_IMODE(entry.stat.st_mode) & 0o777
            # TarInfo's uid, gid, uname and gname default to 0 and "": left alone,
            # the archive does not depend on who wrote the tree.
            if stat.S_ISDIR(entry.stat.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(entry.stat.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = _read_link(entry)
                tar.addfile(info)
            else:
                inode = (entry.stat.st_dev, entry.stat.st_ino)
                if entry.stat.st_nlink > 1 and inode in first_path_of_inode:
                    info.type = tarfile.LNKTYPE
                    info.linkname = first_path_of_inode[inode]
                    tar.addfile(info)
                    continue
                if entry.stat.st_nlink > 1:
                    first_path_of_inode[inode] = entry.rel
                fd, st = _open_regular(entry.path)
                try:
                    info.size = st.st_size
                    tar.addfile(info, _SourceFile(fd, entry.path, st.st_size))
                finally:
                    os.close(fd)
    return sink.count


# ---------------------------------------------------------------- stream_in


class _EndOfArchiveWatch:
    """Remembers what the last tar header block read looked like.

    Past the first member, ``tarfile`` ends iteration without a word on a header
    that is cut short or garbled, so a truncated upload would read as a shorter,
    complete archive. Only tar's end-of-archive marker (a block of zeros) proves
    the stream is whole; this records whether the block that ended it was one.
    """

    def __init__(self) -> None:
        self.last_block: Literal["zeros", "short", "header"] = "header"

    def tarinfo_class(self) -> type[tarfile.TarInfo]:
        """A TarInfo class reporting to this watch; ``TarInfo.frombuf`` is public API."""
        watch = self

        class _WatchedTarInfo(tarfile.TarInfo):
            @classmethod
            def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
                if len(buf) != tarfile.BLOCKSIZE:
                    watch.last_block = "short"
                elif buf == _ZERO_BLOCK:
                    watch.last_block = "zeros"
                else:
                    watch.last_block = "header"
                return super().frombuf(buf, encoding, errors)

        return _WatchedTarInfo


def stream_in(fileobj: BinaryIO, destination: Path) -> ArchiveStats:
    """Unpack the tar stream ``fileobj`` into the new directory ``destination``.

    ``destination`` must not exist yet: this creates it (and any missing parent),
    all at once, by building the tree in a sibling directory named
    :data:`STAGING_PREFIX` ``<name>.<random>`` and renaming that into place once
    every entry is written and checked. So ``destination`` either appears
    complete or not at all, as DESIGN.md's invariant 3 wants of an artifact.

    The stream may be plain tar or compressed (gzip, and bz2 or xz too), detected
    from its first bytes. It is read once, front to back, one chunk in memory.

    Each entry is checked before anything is written for it, and refused, with an
    :class:`ArchiveError` naming the entry and the reason, when
      * its path is absolute, has a ``..`` component, or goes through a symbolic link;
      * it is a symbolic link whose target is absolute, or leads outside
        ``destination`` (checked again once the tree is complete, since links can
        lead through links that come later in the archive);
      * it is a hard link to anything but a regular file earlier in the archive;
      * it is a device, fifo or any other special file, or it names a path that an
        earlier entry already wrote.
    What is written is tamed as Python 3.12's ``filter="data"`` would: no setuid,
    setgid or sticky bit, no group or other write permission, owner read and
    write always set, execute bits only if the owner's is set; directories get
    0o755; owners are never set (everything belongs to this process); mtimes are
    kept, except on symbolic links.

    A stream that is not a tar archive, or ends early, raises :class:`ArchiveError`
    too. On any error nothing is left: no ``destination``, no staging directory.

    Raises :class:`FileExistsError` if ``destination`` exists (a caller's bug:
    artifact subpaths are generated fresh); :class:`StoreFullError` if the store
    runs out of space or quota; :class:`ArtifactStoreError` on other write failures.
    What ``fileobj.read`` raises passes through.
    """
    destination = Path(destination)
    if os.path.lexists(destination):
        raise FileExistsError(
            errno.EEXIST,
            "stream_in creates the artifact's directory; it must not exist yet",
            str(destination),
        )
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(
            prefix=f"{STAGING_PREFIX}{destination.name}.", dir=destination.parent
        )
    except OSError as e:
        raise _store_error(e, destination, destination) from e
    try:
        stats = _Extraction(staging=staging, destination=destination).run(fileobj)
        _publish(staging, destination)
    except BaseException:
        # BaseException too: a cancelled or interrupted request leaves nothing either.
        _remove_tree(staging)
        raise
    return stats


def _remove_tree(root: str) -> None:
    """Remove a staging tree as far as possible, never raising.

    Not ``shutil.rmtree``: it recurses once per level, and an archive may nest
    deeper than Python's recursion limit, which would turn cleaning up into a
    ``RecursionError`` that hides the real one. Links are removed, not followed.
    Whatever cannot be removed is left for the reaper, which knows
    :data:`STAGING_PREFIX`.
    """
    stack = [root]
    given_up: set[str] = set()
    while stack:
        path = stack[-1]
        subdirs: list[str] = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if not entry.is_dir(follow_symlinks=False):
                        os.unlink(entry.path)
                    elif entry.path not in given_up:
                        subdirs.append(entry.path)
            if subdirs:
                stack.extend(subdirs)  # come back to this one once they are gone
                continue
            os.rmdir(path)
        except OSError:
            given_up.add(path)  # and so, failing rmdir, will be every directory above it
        stack.pop()


def _publish(staging: str, destination: Path) -> None:
    try:
        os.chmod(staging, _DIR_MODE)  # mkdtemp made it 0o700
        os.rename(staging, destination)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(
                errno.EEXIST,
                "another writer created the artifact's directory meanwhile",
                str(destination),
            ) from e
        raise _store_error(e, destination, destination) from e


def _store_error(error: OSError, path: str | Path, artifact: Path) -> JetBridgeError:
    """The JetBridge error for a failure to write ``path`` while filling ``artifact``."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(
            f"the artifact store is full ({error.strerror}): could not write artifact "
            f"{artifact} (at {path})"
        )
    return ArtifactStoreError(f"could not write artifact {artifact} (at {path}): {error.strerror}")


def _entry(name: str) -> str:
    return f"archive entry {name!r}"


def _split(path: str) -> tuple[str, ...]:
    """The components of an archive path, or ValueError saying why it may not be written.

    ``./`` prefixes and doubled slashes are harmless and dropped (``tar -C dir .``
    writes the former); the empty tuple is the artifact's root itself.
    """
    if "\0" in path:
        raise ValueError("has a NUL byte in its path")
    if path.startswith("/"):
        raise ValueError("has an absolute path; entries must be relative to the artifact")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ValueError("has a '..' component; entries must stay inside the artifact")
    return parts


def _mtime(member: tarfile.TarInfo) -> tuple[float, float]:
    return (member.mtime, member.mtime)


class _Extraction:
    """One :func:`stream_in`: the staging directory and what has been written to it."""

    def __init__(self, *, staging: str, destination: Path) -> None:
        self.staging = staging
        self.destination = destination
        self.entries = 0
        self.bytes = 0
        # Paths known to be real directories we made: nothing replaces them later,
        # since no entry may be written twice. Saves an lstat per parent per entry.
        self.dirs: set[str] = {""}
        # Regular files written so far: the only things a hard link may name.
        self.files: set[str] = set()
        self.symlinks: list[tuple[str, str, str]] = []  # entry name, path, target
        self.dir_mtimes: list[tuple[str, tuple[float, float]]] = []

    def run(self, fileobj: BinaryIO) -> ArchiveStats:
        watch = _EndOfArchiveWatch()
        # tarfile's streaming reader decompresses gzip itself but never checks the
        # CRC-32 and length at the end of the stream, so a flipped byte in a gzipped
        # upload would land in the store unnoticed. Unwrapping gzip with the gzip
        # module, and reading it to the end below, makes the check happen; "r|*"
        # then sees plain tar (or detects bz2 or xz, which carry their own checks).
        head = _read_up_to(fileobj, len(_GZIP_MAGIC))
        source: _OneWayStream | gzip.GzipFile = _Unread(head, fileobj)
        if head == _GZIP_MAGIC:
            source = gzip.GzipFile(fileobj=source, mode="rb")
        try:
            tar = _StreamingTarFile.open(
                fileobj=source, mode="r|*", tarinfo=watch.tarinfo_class(), encoding="utf-8"
            )
        except (*_BAD_ARCHIVE, TypeError) as e:
            # TypeError: 3.11's own gzip header parser (reached by a doubly gzipped
            # stream) calls ord() on an empty read when the header is cut short.
            raise ArchiveError(f"not a tar archive (plain or compressed): {e}") from e
        with tar:
            while True:
                with self._reading():
                    member = tar.next()
                if member is None:
                    break
                self._extract(tar, member)
        if watch.last_block == "short":
            raise ArchiveError("truncated archive: it ends before tar's end-of-archive marker")
        if watch.last_block == "header":
            raise ArchiveError(f"corrupt archive: the tar header at byte {tar.offset} is damaged")
        if isinstance(source, gzip.GzipFile):
            with self._reading():
                while source.read(_CHUNK):  # to the end, where gzip checks CRC and length
                    pass
        self._check_links_resolve_inside()
        for rel, times in self.dir_mtimes:
            self._set_mtime(os.path.join(self.staging, rel), times, rel)
        return ArchiveStats(entries=self.entries, bytes=self.bytes)

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Reading the archive: tarfile's and the decompressors' errors mean a bad archive."""
        try:
            yield
        except _BAD_ARCHIVE as e:
            raise ArchiveError(f"truncated or corrupt archive: {e}") from e

    @contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        """Writing to the store: OSErrors become JetBridge errors naming entry and artifact."""
        try:
            yield
        except FileExistsError as e:
            raise ArchiveError(f"{_entry(name)}: appears twice in the archive") from e
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise ArchiveError(f"{_entry(name)}: its name is too long for the store") from e
            raise _store_error(e, name, self.destination) from e

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        try:
            parts = _split(name)
        except ValueError as e:
            raise ArchiveError(f"{_entry(name)}: {e}") from None
        self.entries += 1
        if not parts:
            if not member.isdir():
                raise ArchiveError(
                    f"{_entry(name)}: names the artifact itself but is not a directory"
                )
            self.dir_mtimes.append(("", _mtime(member)))
            return
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise ArchiveError(
                f"{_entry(name)}: is a {_kind_of_member(member)}; an artifact may hold only "
                "regular files, directories and links"
            )
        self._make_parents(parts, name)
        rel = "/".join(parts)
        path = os.path.join(self.staging, *parts)
        if member.isdir():
            with self._writing(name):
                os.mkdir(path, _DIR_MODE)
                os.chmod(path, _DIR_MODE)  # mkdir's mode went through the umask
            self.dirs.add(rel)
            self.dir_mtimes.append((rel, _mtime(member)))
        elif member.isreg():
            self._write_file(tar, member, path)
            self.files.add(rel)
        elif member.issym():
            self._check_symlink(member, parts)
            with self._writing(name):
                os.symlink(member.linkname, path)
            self.symlinks.append((name, path, member.linkname))
        else:
            try:
                target = "/".join(_split(member.linkname))
            except ValueError as e:
                raise ArchiveError(
                    f"{_entry(name)}: hard link to {member.linkname!r}, which {e}"
                ) from None
            if target not in self.files:
                raise ArchiveError(
                    f"{_entry(name)}: hard link to {member.linkname!r}, which is not a regular "
                    "file earlier in the archive"
                )
            with self._writing(name):
                os.link(os.path.join(self.staging, target), path, follow_symlinks=False)
            self.files.add(rel)

    def _make_parents(self, parts: tuple[str, ...], name: str) -> None:
        """Make sure every parent of an entry is a real directory, making missing ones.

        Archives need not list directories before what they hold. A parent that is a
        symbolic link is refused even if it points inside: writing through links is
        how archives escape, and no archive we write needs it.
        """
        if "/".join(parts[:-1]) in self.dirs:
            return  # the usual case; and every ancestor of a known directory is one too
        for depth in range(1, len(parts)):
            rel = "/".join(parts[:depth])
            if rel in self.dirs:
                continue
            path = os.path.join(self.staging, *parts[:depth])
            with self._writing(name):
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    os.mkdir(path, _DIR_MODE)
                    os.chmod(path, _DIR_MODE)
                    self.dirs.add(rel)
                    continue
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise ArchiveError(f"{_entry(name)}: its parent {rel!r} is {what}")

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        name = member.name
        with self._reading():
            source = tar.extractfile(member)
        if source is None:  # tarfile gives a reader for every regular file; be sure
            raise ArchiveError(f"{_entry(name)}: tarfile has no content for this regular file")
        with self._writing(name):
            # O_EXCL and O_NOFOLLOW: never reuse or follow what is already there.
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        try:
            while True:
                with self._reading():
                    chunk = source.read(_CHUNK)
                if not chunk:
                    break
                with self._writing(name):
                    _write_all(fd, chunk)
                self.bytes += len(chunk)
            with self._writing(name):
                os.fchmod(fd, _file_mode(member.mode))
            self._set_mtime(fd, _mtime(member), name)
        finally:
            with self._writing(name):
                os.close(fd)

    def _set_mtime(self, target: int | str, times: tuple[float, float], name: str) -> None:
        try:
            with self._writing(name):
                os.utime(target, times)
        except (OverflowError, ValueError) as e:
            raise ArchiveError(f"{_entry(name)}: its mtime {times[1]!r} is out of range") from e

    def _check_symlink(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        """Refuse a link whose target, read as a path from where the link sits, leaves the tree."""
        name, target = member.name, member.linkname
        if not target or "\0" in target:
            raise ArchiveError(f"{_entry(name)}: symbolic link with an empty or invalid target")
        if target.startswith("/"):
            raise ArchiveError(
                f"{_entry(name)}: symbolic link to the absolute path {target!r}; links must be "
                "relative and stay inside the artifact"
            )
        where = list(parts[:-1])
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part != "..":
                where.append(part)
            elif where:
                where.pop()
            else:
                raise ArchiveError(
                    f"{_entry(name)}: symbolic link to {target!r} leads outside the artifact"
                )

    def _check_links_resolve_inside(self) -> None:
        """Resolve every link in the finished tree, through whatever other links it meets.

        The per-entry check reads a target as plain path components; a component
        that is itself a link (perhaps one written later, ``a -> b/c/../..`` then
        ``b -> .``) can still lead out. Only the finished tree says where each goes.
        """
        root = os.path.realpath(self.staging)
        for name, path, target in self.symlinks:
            resolved = os.path.realpath(path)
            if os.path.commonpath([root, resolved]) != root:
                raise ArchiveError(
                    f"{_entry(name)}: symbolic link to {target!r} leads outside the artifact "
                    "through other links"
                )


def _file_mode(mode: int) -> int:
    """The permission bits a regular file gets: what ``filter="data"`` allows."""
    mode &= 0o755  # no setuid, setgid or sticky bit; no group or other write
    if not mode & stat.S_IXUSR:
        mode &= ~0o111  # executable by others but not its owner makes no sense
    return mode | 0o600  # the owner can always read it, and the reaper delete it


def _kind_of_member(member: tarfile.TarInfo) -> str:
    if member.isfifo():
        return "fifo"
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    return f"entry of unsupported type {member.type!r}"


def _read_up_to(fileobj: BinaryIO, size: int) -> bytes:
    """``size`` bytes, fewer only at the end: a socket may hand them over one by one."""
    data = b""
    while len(data) < size and (more := fileobj.read(size - len(data))):
        data += more
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
