#!/usr/bin/env python3
"""Create the demo's git repository (a bare "origin" with a tiny project on ``main``).

``make run`` calls this before running ``examples/demo/pipeline.yml``; it does
nothing when the repository already exists.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

FILES = {
    "greet.py": 'def greet(name: str) -> str:\n    return f"hello, {name}"\n',
    "build.py": (
        "import pathlib, sys, hashlib\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "src = pathlib.Path(__file__).with_name('greet.py').read_text()\n"
        "(out / 'greet.py').write_text(src)\n"
        "(out / 'VERSION').write_text(hashlib.sha256(src.encode()).hexdigest()[:12] + '\\n')\n"
        "print('built', (out / 'VERSION').read_text().strip())\n"
    ),
    "test_greet.py": (
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from greet import greet\n"
        "assert greet('jetbridge') == 'hello, jetbridge', greet('jetbridge')\n"
        "print('1 test passed')\n"
    ),
    "README.md": "# demo\n\nThe project JetBridge's demo pipeline builds.\n",
}

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "JetBridge Demo",
    "GIT_AUTHOR_EMAIL": "demo@jetbridge.invalid",
    "GIT_COMMITTER_NAME": "JetBridge Demo",
    "GIT_COMMITTER_EMAIL": "demo@jetbridge.invalid",
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
        work = Path(tmp)
        git("init", "-q", cwd=work)
        for name, text in FILES.items():
            (work / name).write_text(text)
        git("add", ".", cwd=work)
        git("commit", "-q", "-m", "A tiny project for the demo", cwd=work)
        git("push", "-q", str(origin), "HEAD:refs/heads/main", cwd=work)
    print(f"demo repository created at {origin}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
