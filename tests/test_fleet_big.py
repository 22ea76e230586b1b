"""Big tensors on a real fleet: send, move and get of 100 MiB and 1 GiB tensors.

RabbitMQ refuses messages above 128 MiB, so these travel in chunks
(TENSORFLEET_MAX_MESSAGE_BYTES). The client runs in its own process so its
peak memory (sampled RSS above its RSS just before the tensor was made) is its
own; the bound is 3x the tensor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CLIENT = r"""
import json, os, sys, threading, time
import torch
import client as sy

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

peak = [0]
def sample():
    while True:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)

size = int(sys.argv[1])
hook = sy.TorchHook(torch)
bob, alice = sy.FleetWorker(hook, id="bob"), sy.FleetWorker(hook, id="alice")
bob.synchronize(); alice.synchronize()
base = rss()
threading.Thread(target=sample, daemon=True).start()
x = torch.arange(size // 4, dtype=torch.float32)
result = {"bytes": size}
t0 = time.perf_counter(); p = x.send(bob); bob.synchronize()
result["send_s"] = time.perf_counter() - t0
t0 = time.perf_counter(); p.move(alice); alice.synchronize()
result["move_s"] = time.perf_counter() - t0
t0 = time.perf_counter(); y = p.get()
result["get_s"] = time.perf_counter() - t0
result["equal"] = bool(torch.equal(x, y))
del y
time.sleep(0.01)
result["peak_ratio"] = (peak[0] - base) / size
print(json.dumps(result))
"""


def run_client(size: int, tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "big_client.py"
    script.write_text(CLIENT)
    env = {**os.environ, "TENSORFLEET_TIMEOUT": "900"}
    done = subprocess.run(
        [sys.executable, str(script), str(size)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.timeout(1800)  # a 1 GiB round trip on a loaded 2-core machine can take minutes
@pytest.mark.parametrize("size", [100 * 2**20, 2**30], ids=["100MiB", "1GiB"])
def test_big_tensors_send_move_and_get(fleet: Any, size: int, tmp_path: Path) -> None:
    result = run_client(size, tmp_path)
    print(json.dumps(result))
    assert result["equal"]
    assert result["peak_ratio"] < 3.0, result
