"""Artifact ``stream_out`` and ``stream_in`` beside ``tar c | tar x`` on the same tree.

Moving an artifact in or out of the store (an upload, ``jetbridge`` fetching a
build's output) is a tar stream, checked entry by entry on the way in. This
measures it against GNU tar on the same tree, in the same run, rounds interleaved
so that both meet the same page cache and the same machine load:

- out: ``artifacts.stream_out`` of a ready artifact into a pipe whose reader
  discards it, beside ``tar -c`` into the same kind of pipe;
- in: ``artifacts.stream_in`` of that archive into a new artifact (row, checked
  extraction, digest, ready), beside ``tar -x`` of the same file;
- through: one artifact streamed out straight into another's ``stream_in``
  through a pipe, beside ``tar -c | tar -x``.

The ratio is JetBridge's throughput over tar's (1.0: as fast as tar). The tree is
a source tree's many small files and a few large ones: ``JETBRIDGE_BENCH_STREAM_MB``
(200) in all, made under ``JETBRIDGE_BENCH_DIR`` when set, else pytest's temporary
directory.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from benchmarks.conftest import Recorder
from shared import artifacts
from shared.app import utcnow
from shared.db import ArtifactRow, make_engine, make_session_factory, transaction, upgrade

TOTAL_MB = int(os.environ.get("JETBRIDGE_BENCH_STREAM_MB", "200"))
ROUNDS = 3
#: A fifth of the bytes in 8 KiB files, the rest in 16 MiB ones.
SMALL, LARGE = 8 * 1024, 16 * 1024 * 1024
GROUP = "artifact streams"
CHUNK = 1024 * 1024

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]


def make_tree(root: Path) -> int:
    """The tree to move; returns its bytes."""
    total = TOTAL_MB * 1024 * 1024
    small = total // 5 // SMALL
    block = os.urandom(SMALL)
    for i in range(small):
        folder = root / f"pkg{i % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.txt").write_bytes(block)
    chunk = os.urandom(CHUNK)
    for i in range(max(1, (total - small * SMALL) // LARGE)):
        with open(root / f"big{i}.bin", "wb") as f:
            for _ in range(LARGE // CHUNK):
                f.write(chunk)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class Discard:
    """A pipe's reader that throws away what comes: what a client downloading would cost, minus the network."""

    def __init__(self, read_end: BinaryIO) -> None:
        self.bytes = 0
        self._read = read_end
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while data := self._read.read(CHUNK):
            self.bytes += len(data)

    def join(self) -> None:
        self._thread.join()
        self._read.close()


def _pipe() -> tuple[BinaryIO, BinaryIO]:
    read_fd, write_fd = os.pipe()
    return os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def test_stream_out_and_in_against_tar(
    tmp_path_factory: pytest.TempPathFactory, benchmark: Any, results: Recorder
) -> None:
    base = os.environ.get("JETBRIDGE_BENCH_DIR")
    work = Path(base) / "jetbridge-streams" if base else tmp_path_factory.mktemp("streams")
    shutil.rmtree(work, ignore_errors=True)
    store = work / "store"
    engine = make_engine(f"sqlite:///{work / 'jetbridge.db'}")
    upgrade(engine)
    sessions = make_session_factory(engine)
    row, source = artifacts.create_artifact(sessions, root=store, name="tree", clock=utcnow)
    size = make_tree(source)
    with transaction(sessions) as session:
        fresh = session.get(ArtifactRow, row.id)
        assert fresh is not None
        assert artifacts.mark_ready(session, fresh, root=store, clock=utcnow)
    archive = work / "tree.tar"
    with open(archive, "wb") as f:
        artifacts.stream_out(sessions, row.handle, f, root=store)
    scratch = work / "tar-x"
    seconds: dict[str, list[float]] = {}

    def ours_out() -> None:
        read, write = _pipe()
        reader = Discard(read)
        with write:
            artifacts.stream_out(sessions, row.handle, write, root=store)
        reader.join()
        assert reader.bytes == archive.stat().st_size

    def tar_out() -> None:
        tar = subprocess.Popen(["tar", "-C", str(source), "-cf", "-", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        reader = Discard(tar.stdout)  # type: ignore[arg-type]
        reader.join()
        assert tar.wait() == 0

    landed: list[Path] = []

    def ours_in() -> None:
        with open(archive, "rb") as f:
            new = artifacts.stream_in(sessions, f, root=store, name="in", clock=utcnow)
        landed.append(store / new.subpath)

    def tar_in() -> None:
        scratch.mkdir()
        subprocess.run(["tar", "-C", str(scratch), "-xf", str(archive)], check=True)

    def ours_through() -> None:
        read, write = _pipe()
        out = threading.Thread(
            target=lambda: _close_after(
                write, lambda: artifacts.stream_out(sessions, row.handle, write, root=store)
            )
        )
        out.start()
        with read:
            new = artifacts.stream_in(sessions, read, root=store, name="through", clock=utcnow)
        out.join()
        landed.append(store / new.subpath)

    def tar_through() -> None:
        scratch.mkdir()
        subprocess.run(
            f"tar -C '{source}' -cf - . | tar -C '{scratch}' -xf -", shell=True, check=True
        )

    pairs = {
        "out": (ours_out, tar_out),
        "in": (ours_in, tar_in),
        "through": (ours_through, tar_through),
    }

    def run() -> None:
        for _ in range(ROUNDS):
            for what, (ours, tar) in pairs.items():
                for who, action in (("ours", ours), ("tar", tar)):
                    seconds.setdefault(f"{what}/{who}", []).append(timed(action))
                    shutil.rmtree(scratch, ignore_errors=True)
                    for path in landed:
                        shutil.rmtree(path, ignore_errors=True)
                    landed.clear()

    benchmark.pedantic(run, rounds=1, iterations=1)
    engine.dispose()
    shutil.rmtree(work, ignore_errors=True)
    mb = size / 1e6
    files = "many 8 KiB files and a few 16 MiB ones"
    labels = {
        "out": "stream_out",
        "in": "stream_in",
        "through": "stream_out | stream_in",
    }
    tar_labels = {"out": "tar c", "in": "tar x", "through": "tar c | tar x"}
    for what in pairs:
        ours = statistics.median(seconds[f"{what}/ours"])
        tar = statistics.median(seconds[f"{what}/tar"])
        results.record(GROUP, labels[what], mb / ours, "MB/s", tree=f"{mb:.0f} MB")
        results.record(GROUP, tar_labels[what], mb / tar, "MB/s", tree=f"{mb:.0f} MB")
        results.record(GROUP, f"{labels[what]} ÷ {tar_labels[what]}", tar / ours, "x")
    results.note(
        GROUP,
        f"a {mb:.0f} MB tree of {files}, warm in the page cache; medians of {ROUNDS} "
        "interleaved rounds; the ratio is JetBridge's throughput over GNU tar's "
        "(stream_in also checks every entry, digests the tree and registers the artifact).",
    )
    benchmark.extra_info.update({k: statistics.median(v) for k, v in seconds.items()})


def _close_after(stream: BinaryIO, action: Callable[[], object]) -> None:
    with stream:
        action()
