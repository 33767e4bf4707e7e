"""A small file system mounted for one test: the artifact store's volume, full on purpose.

Mounting needs root (or CAP_SYS_ADMIN); CI and the development machines have it.
Where ``mount`` is refused the test is skipped, saying why, unless tools are
required (``CI=true`` or ``JETBRIDGE_REQUIRE_TOOLS=1``), where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REQUIRE_TOOLS = os.environ.get("CI") == "true" or os.environ.get("JETBRIDGE_REQUIRE_TOOLS") == "1"


@contextmanager
def mounted_tmpfs(path: Path, *, size: str) -> Iterator[Path]:
    """``mount -t tmpfs -o size=<size>`` at ``path`` for the block; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    result = (
        subprocess.run(
            [mount, "-t", "tmpfs", "-o", f"size={size},mode=0777", "jetbridge-test", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mount
        else None
    )
    if result is None or result.returncode != 0:
        why = "no mount command" if result is None else (result.stderr.strip() or "refused")
        message = f"cannot mount a {size} tmpfs at {path} for the store ({why}): needs root"
        if REQUIRE_TOOLS:
            pytest.fail(message + "; CI=true or JETBRIDGE_REQUIRE_TOOLS=1 needs it")
        pytest.skip(message)
    try:
        yield path
    finally:
        done = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if done.returncode != 0:  # something still holds it open: detach it now, freed later
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def used_bytes(path: Path) -> int:
    """Bytes in use on the file system holding ``path``."""
    usage = shutil.disk_usage(path)
    return usage.total - usage.free
