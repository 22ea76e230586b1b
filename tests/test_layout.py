"""The layout contract (issue 10.2): ``client/`` is the user API, tools live in ``deploy/``.

Checked on a fresh interpreter, so a module imported by an earlier test cannot hide
an import: every module of ``client`` (its CLI dispatcher aside) and of ``worker``
loads without the CLI, the demo, the benchmarks or any other tool of ``deploy/``.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import client
import worker

ROOT = Path(__file__).resolve().parent.parent
#: the ``tensorfleet`` command itself: the one module of client/ that names deploy/ tools
CLI = "client.cli"

_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def modules_of(package: object) -> list[str]:
    path = package.__path__  # type: ignore[attr-defined]
    prefix = f"{package.__name__}."  # type: ignore[attr-defined]
    return [info.name for info in pkgutil.walk_packages(path, prefix)]


def loaded_after_importing(names: list[str]) -> set[str]:
    output = subprocess.run(
        [sys.executable, "-c", _PROBE, *names],
        check=True,
        capture_output=True,
        cwd=ROOT,
        timeout=240,
    ).stdout
    return set(json.loads(output))


def test_the_user_api_needs_neither_the_cli_nor_deploy() -> None:
    api = [name for name in modules_of(client) if name != CLI]
    assert api, "client/ has modules"
    loaded = loaded_after_importing(["client", *api])
    tools = sorted(name for name in loaded if name == CLI or name.split(".")[0] == "deploy")
    assert tools == [], f"client/ imports tools: {tools}"


def test_the_worker_needs_nothing_of_deploy() -> None:
    loaded = loaded_after_importing(modules_of(worker))
    assert sorted(name for name in loaded if name.split(".")[0] == "deploy") == []
