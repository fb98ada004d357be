"""Start-up against the floor of the runner's libraries.

The floor is a process that imports exactly the third-party modules one ``runner cycle`` imports
(found by running one and listing them at exit: typer, pydantic-settings, redis, tenacity and what
they import themselves), in the order the cycle imported them, and nothing else: no runner
module, no settings, no event loop. Both processes stamp the moment they are ready to work: the
runner its cycle's ``started_at`` (before the cycle's first step), the floor the end of its
imports. Start-up is that moment less the moment the process was spawned; the cycle's own time
(``duration_ms``) and its wind-down (recording, exporting, the output, exit) are reported apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from typing import Any

#: Runs ``runner`` with the arguments given and writes the non-runner, non-standard-library
#: modules it imported, in import order, to the file ``$BENCH_MODULES`` names.
LIST_MODULES = r"""
import atexit, json, os, runpy, sys

def dump():
    stdlib = sys.stdlib_module_names
    mods = [m for m in list(sys.modules) if m != "__main__" and m.split(".")[0] not in stdlib
            and m.split(".")[0] != "runner"]
    with open(os.environ["BENCH_MODULES"], "w") as fh:
        json.dump(mods, fh)

atexit.register(dump)
sys.argv = ["runner", *sys.argv[1:]]
runpy.run_module("runner", run_name="__main__", alter_sys=True)
"""


def cycle_modules(args: list[str], env: dict[str, str]) -> list[str]:
    """The third-party modules ``runner <args>`` imports, in the order it imports them."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        path = fh.name
    try:
        subprocess.run(
            [sys.executable, "-c", LIST_MODULES, *args],
            env={**env, "BENCH_MODULES": path},
            capture_output=True,
            check=True,
        )
        with open(path) as fh:
            modules: list[str] = json.load(fh)
    finally:
        os.unlink(path)
    return modules


def floor_script(modules: list[str]) -> str:
    """Imports ``modules`` in order and prints the epoch time it finished (its ready stamp).

    ``importlib`` rather than import statements: some names are not identifiers
    (``_sysconfigdata__linux_x86_64-linux-gnu``, which sysconfig loads by file name).
    """
    return (
        "import importlib, time\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(time.time())\n"
    )


def started_epoch(doc: dict[str, Any]) -> float:
    """A cycle's ``started_at`` (ISO 8601 UTC, milliseconds) in seconds since the epoch."""
    return datetime.fromisoformat(str(doc["started_at"]).replace("Z", "+00:00")).timestamp()


def libraries(modules: list[str]) -> list[str]:
    """The distributions' top-level packages among ``modules``, in first-import order."""
    return list(dict.fromkeys(m.split(".")[0] for m in modules if not m.startswith("_")))
