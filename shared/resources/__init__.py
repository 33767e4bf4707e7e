"""The built-in resource types: executables that speak Concourse's resource protocol.

Each type is a folder holding ``check``, ``in`` and ``out`` (JSON request on
stdin, JSON response on stdout, logs on stderr), so a get or put step runs a
built-in type exactly as it runs a resource image: the folder is bound at
``/opt/resource`` in the step's pod, or run in place by the local runtime.
The scripts use only the standard library and the tool they wrap (``git``, or
``google-cloud-storage`` for ``gcs``), because ``shared`` is not importable
inside a step's pod.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

_HERE: Final = Path(__file__).resolve().parent

#: Built-in type name -> the folder holding its ``check``, ``in`` and ``out``.
RESOURCE_DIRS: Final[dict[str, Path]] = {
    "gcs": _HERE / "gcs",
    "git": _HERE / "git",
    "time": _HERE / "time",
}
