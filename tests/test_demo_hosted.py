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

import torch
from click.testing import CliRunner

import client as sy
from client.cli import main

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


def test_hosted_demo_in_process_trains_on_data_the_client_never_sent(hook, tmp_path):
    default = demo_in_process(tmp_path=tmp_path)
    hosted = demo_in_process("--hosted", tmp_path=tmp_path)
    assert "hosted by bob, alice, jon, found with search('#digits')" in hosted
    assert "federated over" not in hosted
    assert FINAL.search(hosted) is not None
    assert FINAL.search(hosted).groups() == FINAL.search(default).groups()  # type: ignore[union-attr]
    for owner_id in OWNERS:
        owner = sy.VirtualWorker(hook, id=owner_id)
        assert len(owner.search("#digits", "#data")) == 1  # the data stays with its owner
        assert owner.search("#digits", "#data")[0].private


def test_hosted_demo_on_a_private_fleet_matches_in_process(tmp_path):
    done = subprocess.run(
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
    assert done.returncode == 0, done.stderr[-3000:]
    assert "starts a private fleet" in done.stderr
    assert "starting fleet workers bob, alice, jon, secure_worker" in done.stderr
    assert "hosted by bob, alice, jon, found with search('#digits')" in done.stdout
    fleet_final = FINAL.search(done.stdout)
    assert fleet_final is not None
    in_process = demo_in_process("--hosted", tmp_path=tmp_path)
    assert fleet_final.groups() == FINAL.search(in_process).groups()  # type: ignore[union-attr]
