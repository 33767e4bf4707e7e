"""Writable inputs: what a copy of an input costs against the zero-copy read-only mount.

``make bench`` runs this. The tree is a few hundred MB: many small files (a source tree,
a node_modules) and a few large ones (build outputs). Three ways to give a task a
writable input, and the default:

- ``zero_copy``: the default, a read-only mount of the producer's directory; what the
  step runner does for it at launch (working out the mounts) is all it costs;
- ``cp``: ``copy_tree`` as the step runner runs it, ``cp --reflink=auto -a``: reflinks
  where the file system has them (XFS, Btrfs, ZFS 2.2), a plain copy elsewhere;
- ``python``: ``copy_tree``'s fallback without GNU cp: FICLONE, else copy_file_range;
- ``plain``: ``cp --reflink=never -a``, a full copy whatever the file system, for scale.

The tree is made under ``JETBRIDGE_BENCH_DIR`` when set (point it at an XFS or Btrfs
mount to see reflinks), else under pytest's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.conftest import Recorder
from shared import launching
from shared.db import ArtifactRow
from shared.plan import InputBinding, OutputBinding, StepSpec
from shared.treecopy import copy_tree

pytestmark = pytest.mark.bench

#: Many small files (a source tree): 10,000 of 4 KiB in 100 directories.
SMALL_FILES, SMALL_SIZE, DIRECTORIES = 10_000, 4 * 1024, 100
#: A few large ones (build outputs): 8 of 32 MiB. With the small ones, about 300 MB.
LARGE_FILES, LARGE_SIZE = 8, 32 * 1024 * 1024


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = os.environ.get("JETBRIDGE_BENCH_DIR")
    root = Path(base) / "jetbridge-bench" if base else tmp_path_factory.mktemp("bench")
    shutil.rmtree(root, ignore_errors=True)
    source = root / "source"
    for d in range(DIRECTORIES):
        (source / f"pkg{d:03d}").mkdir(parents=True)
    block = os.urandom(SMALL_SIZE)
    for i in range(SMALL_FILES):
        (source / f"pkg{i % DIRECTORIES:03d}" / f"file{i:05d}.txt").write_bytes(block)
    chunk = os.urandom(1024 * 1024)
    for i in range(LARGE_FILES):
        with open(source / f"big{i}.bin", "wb") as f:
            for _ in range(LARGE_SIZE // len(chunk)):
                f.write(chunk)
    os.symlink("big0.bin", source / "latest.bin")
    return source


def fresh_target(source: Path) -> Callable[[], tuple[tuple[Path, Path], dict[str, object]]]:
    """A setup for each round: an empty target beside the source (the old one removed)."""
    counter = iter(range(1_000_000))

    def setup() -> tuple[tuple[Path, Path], dict[str, object]]:
        for old in source.parent.glob("target-*"):
            shutil.rmtree(old)
        target = source.parent / f"target-{next(counter)}"
        target.mkdir()
        return (source, target), {}

    return setup


def tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def report(
    benchmark: Any,
    results: Recorder,
    what: str,
    tree: Path,
    copy: Callable[[Path, Path], object] | None = None,
) -> None:
    """Record what was copied, how, its median time and, for a copy, the disk space one
    more copy takes once written out (reflinks share the data blocks)."""
    files = sum(1 for f in tree.rglob("*") if f.is_file())
    median = benchmark.stats.stats.median
    mb = tree_size(tree) / 1e6
    where = {"tree": f"{mb:.0f} MB in {files} files"}
    group = "writable inputs"
    if median < 0.01:
        results.record(group, what, median * 1e6, "µs", **where)
    else:
        results.record(group, what, median, "s", **where)
    if copy is not None:
        (source, target), _ = fresh_target(tree)()
        os.sync()
        free = shutil.disk_usage(target).free
        copy(source, target)
        os.sync()
        used = (free - shutil.disk_usage(target).free) / 1e6
        results.record(group, f"{what}: disk one more copy takes", used, "MB", **where)


def test_zero_copy(benchmark: Any, tree: Path, results: Recorder) -> None:
    """The default: the step runner only works out the mounts; the pod reads in place."""
    spec = StepSpec(
        key="1",
        name="t",
        kind="task",
        inputs=(InputBinding(name="src", producer="0", mount="src"),),
        outputs=(OutputBinding(name="out", mount="out"),),
    )
    row = ArtifactRow(subpath="artifacts/1/a", name="src")
    out = ArtifactRow(subpath="artifacts/1/b", name="out")
    mounts = benchmark(launching.mounts, spec, [(spec.inputs[0], row)], {"out": out})
    assert [m.read_only for m in mounts] == [True, False]
    report(benchmark, results, "zero-copy read-only mount (the default)", tree)


def test_copy_with_cp(benchmark: Any, tree: Path, results: Recorder) -> None:
    result = benchmark.pedantic(copy_tree, setup=fresh_target(tree), rounds=3, iterations=1)
    assert result.method == "cp"
    (target,) = tree.parent.glob("target-*")
    assert tree_size(target) == tree_size(tree)
    assert os.readlink(target / "latest.bin") == "big0.bin"
    report(benchmark, results, "copy_tree with cp --reflink=auto", tree, copy_tree)


def test_copy_in_python(benchmark: Any, tree: Path, results: Recorder) -> None:
    def copy(source: Path, target: Path) -> object:
        return copy_tree(source, target, use_cp=False)

    result = benchmark.pedantic(copy, setup=fresh_target(tree), rounds=3, iterations=1)
    (target,) = tree.parent.glob("target-*")
    assert tree_size(target) == tree_size(tree)
    cloned = getattr(result, "cloned", 0)
    report(
        benchmark, results, f"copy_tree in Python ({cloned} files cloned by FICLONE)", tree, copy
    )


def test_plain_copy_for_scale(benchmark: Any, tree: Path, results: Recorder) -> None:
    def copy(source: Path, target: Path) -> None:
        subprocess.run(
            ["cp", "--reflink=never", "-a", "--no-target-directory", f"{source}/.", str(target)],
            check=True,
        )

    benchmark.pedantic(copy, setup=fresh_target(tree), rounds=3, iterations=1)
    report(benchmark, results, "plain copy, cp --reflink=never (for scale)", tree, copy)
