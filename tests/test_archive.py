"""Tests for shared/archive.py: tar in and out of the store, and the tree digest.

Hostile archives are built here entry by entry with ``tarfile.TarInfo``, the way
an attacker would, rather than with a tar tool that would refuse to write them.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.archive import (
    STAGING_PREFIX,
    ArchiveStats,
    TreeDigest,
    stream_in,
    stream_out,
    tree_digest,
)
from shared.errors import ArchiveError, ArtifactStoreError, StoreFullError

# ---------------------------------------------------------------- building archives

Member = tuple[tarfile.TarInfo, bytes]


def _file(name: str, data: bytes = b"content\n", *, mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 1_700_000_000
    return info, data


def _dir(name: str, *, mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, b""


def _symlink(name: str, target: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, b""


def _hardlink(name: str, target: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info, b""


def _special(name: str, kind: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, b""


def _tar(*members: Member) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def _listing(root: Path) -> set[tuple[str, str]]:
    """Every path below root with its kind: what a user would see with ls -R."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            found.add((str(path.relative_to(root)), kind))
    return found


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store root next to a directory of things an escaping archive would reach for."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("do not touch\n")
    root = tmp_path / "store"
    root.mkdir()
    return root


def _assert_nothing_left(store: Path, destination: Path) -> None:
    assert not os.path.lexists(destination)
    assert list(store.iterdir()) == [], "a staging directory was left behind"


# ---------------------------------------------------------------- a tree to move


MTIME = 1_600_000_000


def _make_tree(root: Path) -> Path:
    """A tree with every kind of thing an artifact may hold."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "data.bin").write_bytes(bytes(range(256)) * 1000)
    (root / "docs" / "empty").mkdir(parents=True)
    (root / "docs" / "readme.md").write_text("# readme\n")
    (root / "docs" / "private").write_text("owner only\n")
    (root / "docs" / "private").chmod(0o600)
    (root / "docs" / "empty-file").write_bytes(b"")
    (root / "docs" / "link-to-readme").symlink_to("readme.md")
    (root / "top-link").symlink_to("docs")
    (root / "dangling").symlink_to("docs/nowhere")
    os.link(root / "docs" / "readme.md", root / "hard-readme")
    (root / ("long-" + "n" * 150)).write_text("a name longer than ustar's 100 bytes\n")
    (root / "données").mkdir()
    (root / "données" / "été.txt").write_text("unicode\n")
    (root / os.fsdecode(b"latin-\xe9.txt")).write_text("a name that is not UTF-8\n")
    os.utime(root / "bin" / "tool", (MTIME, MTIME))
    return root


def _set_all_mtimes(root: Path, mtime: float) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath, name), (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))


def _round_trip(source: Path, destination: Path) -> tuple[int, ArchiveStats]:
    buffer = io.BytesIO()
    written = stream_out(source, buffer)
    buffer.seek(0)
    return written, stream_in(buffer, destination)


# ---------------------------------------------------------------- round trip


def test_round_trip_keeps_content_links_and_modes(tmp_path: Path) -> None:
    source = _make_tree(tmp_path / "source")
    copy = tmp_path / "store" / "copy"

    written, stats = _round_trip(source, copy)

    assert tree_digest(copy) == tree_digest(source)
    assert _listing(copy) == _listing(source)
    assert os.readlink(copy / "docs" / "link-to-readme") == "readme.md"
    assert os.readlink(copy / "top-link") == "docs"
    assert os.readlink(copy / "dangling") == "docs/nowhere"
    assert stat.S_IMODE((copy / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((copy / "bin" / "data.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((copy / "docs" / "private").stat().st_mode) == 0o600
    assert (copy / "hard-readme").stat().st_ino == (copy / "docs" / "readme.md").stat().st_ino
    assert (copy / "bin" / "tool").stat().st_mtime == MTIME
    assert stats.entries == len(_listing(source))
    # The hard link's content is written once.
    digest = tree_digest(source)
    assert stats.bytes == digest.size - (source / "hard-readme").stat().st_size
    assert written % tarfile.RECORDSIZE == 0


def test_round_trip_of_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    _, stats = _round_trip(tmp_path / "empty", tmp_path / "store" / "copy")

    assert stats == ArchiveStats(entries=0, bytes=0)
    assert list((tmp_path / "store" / "copy").iterdir()) == []


# Deeper than Python's recursion limit (1000), within Linux's PATH_MAX (4096).
DEPTH = 1200


def _remove_chain(top: Path) -> None:
    """Remove a chain of DEPTH directories named "d" bottom up.

    Neither ``shutil.rmtree`` nor pytest's clean-up of old temporary directories
    can: both recurse once per level.
    """
    levels = [top.joinpath(*["d"] * n) for n in range(DEPTH + 1)]
    for level in reversed(levels):
        for child in level.iterdir():
            if not child.is_dir() or child.is_symlink():
                child.unlink()
        level.rmdir()


@pytest.fixture
def deep_tree(tmp_path: Path) -> Iterator[Path]:
    deep = leaf = tmp_path / "deep"
    deep.mkdir()
    for _ in range(DEPTH):  # one level at a time: mkdir(parents=True) itself recurses
        leaf = leaf / "d"
        leaf.mkdir()
    (leaf / "bottom.txt").write_text("found me\n")
    yield deep
    _remove_chain(deep)


def test_round_trip_of_a_tree_deeper_than_the_recursion_limit(
    tmp_path: Path, deep_tree: Path
) -> None:
    copy = tmp_path / "store" / "copy"

    _round_trip(deep_tree, copy)

    try:
        assert (copy.joinpath(*["d"] * DEPTH) / "bottom.txt").read_text() == "found me\n"
        assert tree_digest(copy) == tree_digest(deep_tree)
    finally:
        _remove_chain(copy)


def test_a_hostile_entry_after_a_deep_tree_leaves_nothing(store: Path, deep_tree: Path) -> None:
    deep = io.BytesIO()
    stream_out(deep_tree, deep)
    with tarfile.open(fileobj=io.BytesIO(deep.getvalue())) as tar:
        members = [(m, b"found me\n" if m.isreg() else b"") for m in tar.getmembers()]

    with pytest.raises(ArchiveError, match=r"'\.\.' component"):
        stream_in(io.BytesIO(_tar(*members, _file("../escape"))), store / "artifact")

    _assert_nothing_left(store, store / "artifact")


def test_stream_out_is_deterministic_and_anonymous(tmp_path: Path) -> None:
    first = _make_tree(tmp_path / "first")
    second = _make_tree(tmp_path / "elsewhere" / "second")
    # A fraction of a second, which the archive drops: whole seconds need no PAX
    # header per entry.
    _set_all_mtimes(first, MTIME + 0.25)
    _set_all_mtimes(second, MTIME + 0.25)
    out_first, out_second = io.BytesIO(), io.BytesIO()

    written = stream_out(first, out_first)
    stream_out(second, out_second)

    assert out_first.getvalue() == out_second.getvalue()
    assert written == len(out_first.getvalue())
    with tarfile.open(fileobj=io.BytesIO(out_first.getvalue())) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[:4] == ["bin", "bin/data.bin", "bin/tool", "dangling"]
    assert not any(n.startswith(("/", "./")) for n in names)
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
    assert {m.mtime for m in members} == {MTIME}
    assert tar.format == tarfile.PAX_FORMAT


def test_stream_out_refuses_special_files_and_what_it_wrote_does_not_unpack(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("written before the fifo\n")
    os.mkfifo(tree / "b.fifo")
    partial = io.BytesIO()

    with pytest.raises(ArchiveError, match=r"b\.fifo is a fifo"):
        stream_out(tree, partial)

    partial.seek(0)
    with pytest.raises(ArchiveError):
        stream_in(partial, tmp_path / "store" / "copy")
    _assert_nothing_left(tmp_path / "store", tmp_path / "store" / "copy")


def test_stream_out_of_a_missing_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(ArtifactStoreError, match="missing"):
        stream_out(tmp_path / "missing", io.BytesIO())


def test_stream_out_streams_large_files(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "sparse.bin", "wb") as f:  # 64 MiB, almost none of it on disk
        f.truncate(64 * 1024 * 1024)
        f.write(b"start")
    archive = tmp_path / "big.tar"

    tracemalloc.start()
    try:
        with open(archive, "wb") as out:
            stream_out(big, out)
        with open(archive, "rb") as source:
            stream_in(source, tmp_path / "store" / "copy")
        digest = tree_digest(tmp_path / "store" / "copy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert digest.size == 64 * 1024 * 1024
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes: something held a whole file"


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar binary on this machine")
def test_stream_in_reads_what_gnu_tar_writes_gzipped(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (source / "sub" / "run.sh").chmod(0o755)
    (source / "link").symlink_to("sub/run.sh")
    archive = tmp_path / "made-by-tar.tgz"
    # "." makes entries start with "./" and include the root itself, as users' tarballs do.
    subprocess.run(["tar", "-C", str(source), "-czf", str(archive), "."], check=True)

    with open(archive, "rb") as f:
        stats = stream_in(f, tmp_path / "store" / "copy")

    assert tree_digest(tmp_path / "store" / "copy") == tree_digest(source)
    assert stats.entries == 4  # ./, ./sub/, ./sub/run.sh, ./link


def test_stream_in_reads_gzip(tmp_path: Path) -> None:
    source = _make_tree(tmp_path / "source")
    plain = io.BytesIO()
    stream_out(source, plain)

    stream_in(io.BytesIO(gzip.compress(plain.getvalue())), tmp_path / "store" / "copy")

    assert tree_digest(tmp_path / "store" / "copy") == tree_digest(source)


def test_stream_in_creates_missing_parents(tmp_path: Path) -> None:
    destination = tmp_path / "store" / "builds" / "7" / "out"

    stream_in(io.BytesIO(_tar(_file("a.txt"))), destination)

    assert (destination / "a.txt").read_bytes() == b"content\n"


def test_stream_in_refuses_an_existing_destination_and_leaves_it_alone(store: Path) -> None:
    destination = store / "artifact"
    destination.mkdir()
    (destination / "kept.txt").write_text("already here\n")

    with pytest.raises(FileExistsError):
        stream_in(io.BytesIO(_tar(_file("a.txt"))), destination)

    assert _listing(destination) == {("kept.txt", "file")}
    assert [p.name for p in store.iterdir()] == ["artifact"]


# ---------------------------------------------------------------- what stream_in writes


@dataclass(frozen=True)
class ModeCase:
    desc: str
    kind: str
    archived: int
    written: int


MODE_CASES = [
    ModeCase("plain file", "file", 0o644, 0o644),
    ModeCase("executable", "file", 0o755, 0o755),
    ModeCase("setuid dropped", "file", 0o4755, 0o755),
    ModeCase("setgid and sticky dropped", "file", 0o3755, 0o755),
    ModeCase("group and other write dropped", "file", 0o777, 0o755),
    ModeCase("exec without owner exec dropped", "file", 0o075, 0o644),
    ModeCase("owner read and write always", "file", 0o000, 0o600),
    ModeCase("owner-only kept", "file", 0o700, 0o700),
    ModeCase("private directory opened", "dir", 0o700, 0o755),
    ModeCase("setgid directory tamed", "dir", 0o2777, 0o755),
]


@pytest.mark.parametrize("case", MODE_CASES, ids=[c.desc for c in MODE_CASES])
def test_stream_in_tames_modes_like_the_data_filter(store: Path, case: ModeCase) -> None:
    member = (
        _file("x", mode=case.archived) if case.kind == "file" else _dir("x", mode=case.archived)
    )

    stream_in(io.BytesIO(_tar(member)), store / "artifact")

    assert stat.S_IMODE((store / "artifact" / "x").stat().st_mode) == case.written


def test_stream_in_ignores_owners_in_the_archive(store: Path) -> None:
    info, data = _file("owned")
    info.uid, info.gid, info.uname, info.gname = 4321, 8765, "mallory", "wheel"

    stream_in(io.BytesIO(_tar((info, data))), store / "artifact")

    st = (store / "artifact" / "owned").stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_stream_in_accepts_dot_slash_names_and_a_root_entry(store: Path) -> None:
    archive = _tar(_dir("."), _dir("./sub"), _file("./sub/a.txt"), _file("sub//b.txt"))

    stats = stream_in(io.BytesIO(archive), store / "artifact")

    assert _listing(store / "artifact") == {
        ("sub", "dir"),
        ("sub/a.txt", "file"),
        ("sub/b.txt", "file"),
    }
    assert stats == ArchiveStats(entries=4, bytes=2 * len(b"content\n"))


# ---------------------------------------------------------------- hostile archives


@dataclass(frozen=True)
class Hostile:
    desc: str
    members: list[Member]
    entry: str
    """The entry the error must name."""
    reason: str
    """A fragment of the reason the error must give."""


HOSTILE = [
    Hostile("absolute path", [_file("/etc/evil")], "/etc/evil", "absolute path"),
    Hostile("dot-dot", [_file("../x")], "../x", "'..' component"),
    Hostile("dot-dot deeper", [_file("a/../../x")], "a/../../x", "'..' component"),
    Hostile("dot-dot in a directory", [_dir("sub/../..")], "sub/../..", "'..' component"),
    Hostile("symlink to /etc", [_symlink("etc", "/etc")], "etc", "absolute path '/etc'"),
    Hostile(
        "symlink up and out",
        [_dir("a"), _symlink("a/up", "../../outside")],
        "a/up",
        "leads outside the artifact",
    ),
    Hostile(
        "symlink chain escaping",
        [_dir("d"), _symlink("d/up", ".."), _symlink("esc", "d/up/../outside")],
        "esc",
        "leads outside the artifact through other links",
    ),
    Hostile(
        "symlink chain escaping through a later link",
        [_symlink("a", "b/c/../../outside"), _symlink("b", ".")],
        "a",
        "leads outside the artifact through other links",
    ),
    Hostile(
        "file written through a symlink",
        [_dir("sub"), _symlink("s", "sub"), _file("s/f")],
        "s/f",
        "its parent 's' is a symbolic link",
    ),
    Hostile(
        "file written through a symlink to outside",
        [_symlink("s", "/tmp"), _file("s/f")],
        "s",
        "absolute path",
    ),
    Hostile(
        "hard link to an absolute path",
        [_hardlink("h", "/etc/passwd")],
        "h",
        "hard link to '/etc/passwd'",
    ),
    Hostile(
        "hard link outside",
        [_hardlink("h", "../outside/secret")],
        "h",
        "'..' component",
    ),
    Hostile(
        "hard link to a non-member",
        [_hardlink("h", "missing")],
        "h",
        "not a regular file earlier in the archive",
    ),
    Hostile(
        "hard link to a symlink",
        [_symlink("l", "ok.txt"), _hardlink("h", "l")],
        "h",
        "not a regular file earlier in the archive",
    ),
    Hostile("character device", [_special("null", tarfile.CHRTYPE)], "null", "character device"),
    Hostile("block device", [_special("sda", tarfile.BLKTYPE)], "sda", "block device"),
    Hostile("fifo", [_special("pipe", tarfile.FIFOTYPE)], "pipe", "fifo"),
    Hostile("same name twice", [_file("ok.txt", b"replaced")], "ok.txt", "appears twice"),
    Hostile("file named as the root", [_file(".")], ".", "names the artifact itself"),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c.desc for c in HOSTILE])
def test_stream_in_refuses_hostile_entries_and_leaves_nothing(
    tmp_path: Path, store: Path, case: Hostile
) -> None:
    # A harmless entry first, so that refusing happens after something was written.
    archive = _tar(_file("ok.txt", b"harmless\n"), *case.members)
    before = _listing(tmp_path)

    with pytest.raises(ArchiveError) as refused:
        stream_in(io.BytesIO(archive), store / "artifact")

    message = str(refused.value)
    assert f"archive entry {case.entry!r}" in message
    assert case.reason in message
    _assert_nothing_left(store, store / "artifact")
    assert _listing(tmp_path) == before
    assert (tmp_path / "outside" / "secret").read_text() == "do not touch\n"


def test_symlinks_that_stay_inside_are_kept(store: Path) -> None:
    archive = _tar(
        _dir("d"),
        _file("d/f"),
        _symlink("d/up", ".."),
        _symlink("via-up", "d/up/d/f"),
        _symlink("d/sibling", "../d/./f"),
    )

    stream_in(io.BytesIO(archive), store / "artifact")

    assert (store / "artifact" / "via-up").read_bytes() == b"content\n"
    assert (store / "artifact" / "d" / "sibling").read_bytes() == b"content\n"


# ---------------------------------------------------------------- broken archives


def _two_file_archive() -> tuple[bytes, tarfile.TarInfo, tarfile.TarInfo]:
    data = _tar(_file("a", b"a" * 1000), _file("b", b"b" * 10))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        first, second = tar.getmembers()
    return data, first, second


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@dataclass(frozen=True)
class Broken:
    desc: str
    make: Callable[[], bytes]
    reason: str


def _cut(where: Callable[[tarfile.TarInfo, tarfile.TarInfo], int]) -> Callable[[], bytes]:
    def make() -> bytes:
        data, first, second = _two_file_archive()
        return data[: where(first, second)]

    return make


def _corrupt_second_header() -> bytes:
    data, _, second = _two_file_archive()
    return _flip(data, second.offset + 1)


def _gzip_cut_in_half() -> bytes:
    data = gzip.compress(_tar(_file("a", os.urandom(50_000))))
    return data[: len(data) // 2]


def _gzip_corrupt() -> bytes:
    data = gzip.compress(_tar(_file("a", os.urandom(50_000))))
    return _flip(data, len(data) // 2)


BROKEN = [
    Broken("empty input", lambda: b"", "not a tar archive"),
    Broken("text", lambda: b"hello, world\n" * 100, "not a tar archive"),
    Broken("gzip header cut short", lambda: b"\x1f\x8b\x08\x04\x00", "not a tar archive"),
    Broken("cut in file data", _cut(lambda a, b: a.offset_data + 100), "truncated"),
    Broken("cut between entries", _cut(lambda a, b: b.offset), "truncated"),
    Broken("cut in a header", _cut(lambda a, b: b.offset + 100), "truncated"),
    Broken("end marker missing", _cut(lambda a, b: b.offset_data + 512), "truncated"),
    Broken("corrupt header", _corrupt_second_header, "corrupt"),
    Broken("gzip cut in half", _gzip_cut_in_half, "truncated"),
    Broken("gzip corrupt", _gzip_corrupt, "corrupt"),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c.desc for c in BROKEN])
def test_stream_in_refuses_broken_archives_and_leaves_nothing(store: Path, case: Broken) -> None:
    with pytest.raises(ArchiveError, match=case.reason):
        stream_in(io.BytesIO(case.make()), store / "artifact")

    _assert_nothing_left(store, store / "artifact")


# ---------------------------------------------------------------- a full store


@pytest.fixture
def tiny_store(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a store that really runs out of space."""
    root = tmp_path / "tiny"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


def test_stream_in_on_a_full_store_says_so_and_leaves_nothing(tiny_store: Path) -> None:
    archive = _tar(_file("small.txt"), _file("big.bin", b"\0" * (1024 * 1024)))
    destination = tiny_store / "builds" / "artifact"

    with pytest.raises(StoreFullError) as full:
        stream_in(io.BytesIO(archive), destination)

    assert "store is full" in str(full.value)
    assert str(destination) in str(full.value)
    _assert_nothing_left(tiny_store / "builds", destination)


# ---------------------------------------------------------------- tree_digest


def test_digest_counts_files_and_bytes(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a").write_bytes(b"12345")
    (tree / "sub" / "b").write_bytes(b"123")
    (tree / "link").symlink_to("a")

    digest = tree_digest(tree)

    assert (digest.size, digest.files) == (8, 2)
    assert len(digest.sha256) == 64


def test_digest_format_is_pinned(tmp_path: Path) -> None:
    """Digests are stored in the artifacts table: a change of format must be deliberate."""
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "run").write_text("#!/bin/sh\n")
    (tree / "bin" / "run").chmod(0o755)
    (tree / "readme").write_text("hello\n")
    (tree / "latest").symlink_to("bin/run")
    (tree / "empty").mkdir()

    assert tree_digest(tree) == TreeDigest(
        size=16,
        files=2,
        sha256="9ee54351b5db4b55238d060642cb743f46ffe22d999c9ce8f2ff8d16738b0cf8",
    )


def test_digest_ignores_location_and_mtimes(tmp_path: Path) -> None:
    here = _make_tree(tmp_path / "here")
    there = _make_tree(tmp_path / "somewhere" / "else")
    _set_all_mtimes(there, 1_000_000_000)

    assert tree_digest(here) == tree_digest(there)


def _relink(link: Path, target: str) -> None:
    link.unlink()
    link.symlink_to(target)


@dataclass(frozen=True)
class Change:
    desc: str
    apply: Callable[[Path], object]
    changes_digest: bool


CHANGES = [
    Change("content", lambda t: (t / "bin" / "data.bin").write_bytes(b"other"), True),
    Change("one byte", lambda t: (t / "docs" / "readme.md").write_text("# readmE\n"), True),
    Change("rename", lambda t: (t / "bin" / "tool").rename(t / "bin" / "tool2"), True),
    Change("move into a directory", lambda t: (t / "docs" / "private").rename(t / "private"), True),
    Change("exec bit set", lambda t: (t / "bin" / "data.bin").chmod(0o744), True),
    Change("exec bit cleared", lambda t: (t / "bin" / "tool").chmod(0o644), True),
    Change("empty directory added", lambda t: (t / "new-dir").mkdir(), True),
    Change("empty file added", lambda t: (t / "new-file").touch(), True),
    Change("symlink target", lambda t: _relink(t / "top-link", "bin"), True),
    Change(
        "file replaced by a link to the same content",
        lambda t: _relink(t / "hard-readme", "docs/readme.md"),
        True,
    ),
    Change("mtime", lambda t: _set_all_mtimes(t, 1_234_567_890), False),
    Change("group write bit", lambda t: (t / "docs" / "readme.md").chmod(0o664), False),
]


@pytest.mark.parametrize("case", CHANGES, ids=[c.desc for c in CHANGES])
def test_digest_sees_content_changes_only(tmp_path: Path, case: Change) -> None:
    tree = _make_tree(tmp_path / "tree")
    before = tree_digest(tree)

    case.apply(tree)

    assert (tree_digest(tree) != before) == case.changes_digest


def test_digest_refuses_special_files(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    os.mkfifo(tmp_path / "tree" / "pipe")

    with pytest.raises(ArchiveError, match="pipe is a fifo"):
        tree_digest(tmp_path / "tree")


class _FailingStream(io.RawIOBase):
    """An upload whose connection drops after ``good`` bytes."""

    def __init__(self, data: bytes, good: int) -> None:
        self._data = io.BytesIO(data[:good])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._data.readinto(buffer)
        if n == 0:
            raise ConnectionResetError("connection reset by peer")
        return n


def test_a_failing_input_stream_passes_through_and_leaves_nothing(store: Path) -> None:
    archive = _tar(_file("a", b"a" * 100_000), _file("b", b"b" * 100_000))

    with pytest.raises(ConnectionResetError):
        stream_in(_FailingStream(archive, 150_000), store / "artifact")  # type: ignore[arg-type]

    _assert_nothing_left(store, store / "artifact")
    assert all(not p.name.startswith(STAGING_PREFIX) for p in store.iterdir())
