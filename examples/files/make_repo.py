#!/usr/bin/env python3
"""Make a bare git repository ("origin") whose ``main`` holds this folder's files.

The run-time files example reads its task config, a version and its own pipeline from
this repository. Does nothing when the repository already exists.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "JetBridge Example",
    "GIT_AUTHOR_EMAIL": "example@jetbridge.invalid",
    "GIT_COMMITTER_NAME": "JetBridge Example",
    "GIT_COMMITTER_EMAIL": "example@jetbridge.invalid",
}


def git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main(origin: Path) -> None:
    if (origin / "HEAD").exists():
        return
    origin.mkdir(parents=True, exist_ok=True)
    git("init", "--bare", "-q", str(origin), cwd=origin.parent)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(HERE, work, ignore=shutil.ignore_patterns("__pycache__"))
        git("init", "-q", cwd=work)
        git("add", ".", cwd=work)
        git("commit", "-q", "-m", "The run-time files example", cwd=work)
        git("push", "-q", str(origin), "HEAD:refs/heads/main", cwd=work)
    print(f"repository created at {origin}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
