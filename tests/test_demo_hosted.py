"""``tensorfleet demo --hosted``: the owners host their digits, the client finds and trains.

The shares are the ones ``federate`` would send, so a hosted run prints exactly the
numbers of the default run; in-process the owners get them through ``data=``, on the
fleet through ``tensorfleet worker --dataset`` on a private fleet the demo starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import client as sy
from client.cli import main
from deploy.demo import DemoConfig, load_split, write_owner_files

REPO = Path(__file__).resolve().parent.parent
FINAL = re.compile(r"final test accuracy: federated ([\d.]+)%, centralized ([\d.]+)%")
#: a private fleet of four workers on a loaded 2-core machine, plus one round
FLEET_TIMEOUT = 600
OWNERS = ("bob", "alice", "jon")


def demo_in_process(*args: str, tmp_path: Path) -> str:
    threads = torch.get_num_threads()  # the demo pins torch to one thread
    try:
        result = CliRunner().invoke(
            main,
            ["demo", "--no-progress", "--rounds", "1", "--out", str(tmp_path / "d.png"), *args],
            prog_name="tensorfleet",
        )
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def in_process_hosted(hook: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The output of ``tensorfleet demo --hosted --rounds 1`` on in-process workers."""
    return demo_in_process("--hosted", tmp_path=tmp_path_factory.mktemp("demo"))


def fleet_demo(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``tensorfleet demo --fleet --hosted --rounds 1`` as another client (a process)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "client.cli",
            "demo",
            "--no-progress",
            "--fleet",
            "--hosted",
            "--rounds",
            "1",
            "--out",
            str(tmp_path / "fleet.png"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=FLEET_TIMEOUT,
    )


def final(output: str) -> tuple[str, ...]:
    found = FINAL.search(output)
    assert found is not None, output[-2000:]
    return found.groups()


def test_hosted_demo_in_process_trains_on_data_the_client_never_sent(
    hook, in_process_hosted, tmp_path
):
    default = demo_in_process(tmp_path=tmp_path)
    hosted = in_process_hosted
    assert "hosted by bob, alice, jon, found with search('#digits')" in hosted
    assert "federated over" not in hosted
    assert final(hosted) == final(default)
    for owner_id in OWNERS:
        owner = sy.VirtualWorker(hook, id=owner_id)
        assert len(owner.search("#digits", "#data")) == 1  # the data stays with its owner
        assert owner.search("#digits", "#data")[0].private


def test_hosted_demo_on_a_private_fleet_matches_in_process(in_process_hosted, tmp_path):
    done = fleet_demo(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "so the demo starts a private fleet" in done.stderr
    assert "starting fleet workers bob, alice, jon, secure_worker" in done.stderr
    assert "hosted by bob, alice, jon, found with search('#digits')" in done.stdout
    assert final(done.stdout) == final(in_process_hosted)


def test_hosted_demo_uses_a_running_fleet_whose_owners_host_the_digits(in_process_hosted, tmp_path):
    """Operators started their workers with --dataset: the demo finds their data and trains."""
    import fleet_fixture

    files = write_owner_files(load_split(DemoConfig()), OWNERS, tmp_path)
    datasets = {owner: [f"digits={path}"] for owner, path in files.items()}
    with fleet_fixture.fleet((*OWNERS, "secure_worker"), datasets=datasets) as running:
        done = fleet_demo(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"using the running fleet (namespace {running.namespace})" in done.stderr
    assert "starting" not in done.stderr  # it used the fleet that runs; it started none
    assert final(done.stdout) == final(in_process_hosted)
