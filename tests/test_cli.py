"""``tensorfleet``: every mistake is answered with one ``Error:`` line and click's exit status.

Usage errors (a bad option or argument) exit 2 and are caught before any worker
starts or any training runs; runtime errors (a TensorFleet error such as an
unreachable broker, a bad TENSORFLEET_* value, an OS error) exit 1. Only
``tensorfleet --debug`` shows tracebacks. Option mistakes go through click's
CliRunner on the real entry point; mistakes in the environment go through a
``python -m client.cli`` subprocess, which reads its settings afresh.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from client.cli import main

REPO = Path(__file__).resolve().parent.parent
#: a subprocess imports torch first, which takes a while on a loaded machine
SUBPROCESS_TIMEOUT = 240


def invoke(*args: str) -> Result:
    """``tensorfleet ARGS`` through click's test runner (stdout and stderr apart)."""
    return CliRunner().invoke(main, list(args), prog_name="tensorfleet")


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> Result:
    """``python -m client.cli ARGS`` in a subprocess, its environment extended by ``env``."""
    completed = subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    return Result(
        runner=CliRunner(),
        stdout_bytes=completed.stdout.encode(),
        stderr_bytes=completed.stderr.encode(),
        output_bytes=(completed.stdout + completed.stderr).encode(),
        return_value=None,
        exit_code=completed.returncode,
        exception=None,
    )


def error_line(result: Result, exit_code: int) -> str:
    """The one line on stderr, after checking it is one ``Error:`` line and the exit status."""
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def fleet_flag(worker_kind: str) -> list[str]:
    return ["--fleet"] if worker_kind == "fleet" else []


# ------------------------------------------------------------------------ demo options


@pytest.mark.parametrize("rounds", ["0", "-1"])
def test_rounds_below_one_is_a_usage_error(worker_kind, rounds, tmp_path):
    result = invoke(
        "demo", *fleet_flag(worker_kind), "--rounds", rounds, "--out", str(tmp_path / "p.png")
    )

    line = error_line(result, 2)
    assert f"Invalid value for '--rounds': {rounds} is not in the range x>=1" in line
    assert "tensorfleet demo --help" in line
    assert result.stdout == ""  # nothing ran


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--local-epochs", "0", "0 is not in the range x>=1"),
        ("--batch-size", "0", "0 is not in the range x>=1"),
        ("--hidden", "-3", "-3 is not in the range x>=1"),
        ("--max-train", "0", "0 is not in the range x>=1"),
        ("--lr", "0", "0.0 is not in the range x>0.0"),
        ("--lr", "-0.1", "-0.1 is not in the range x>0.0"),
        ("--lr", "nan", "nan is not a finite number above 0"),
        ("--lr", "fast", "'fast' is not a valid positive number"),
        ("--seed", "-1", "-1 is not in the range 0<=x<=4294967295"),
    ],
)
def test_each_numeric_option_is_checked(worker_kind, option, value, says):
    result = invoke("demo", *fleet_flag(worker_kind), option, value)

    assert says in error_line(result, 2)
    assert f"Invalid value for '{option}'" in result.stderr


@pytest.mark.parametrize(
    ("owners", "says"),
    [
        ("", "give at least one worker id"),
        (" , ", "give at least one worker id"),
        ("bob,,alice", "has an empty id"),
        ("bob,alice,bob", "bob given more than once: ids must differ"),
        ("bob,secure_worker", "secure_worker is the aggregator, not a data owner"),
        ("bob,b@d", "worker id 'b@d' cannot be part of a queue name"),
    ],
)
def test_owners_must_be_distinct_valid_ids_other_than_the_aggregator(worker_kind, owners, says):
    result = invoke("demo", *fleet_flag(worker_kind), "--owners", owners)

    line = error_line(result, 2)
    assert "Invalid value for '--owners'" in line
    assert says in line


def test_out_in_a_missing_directory_is_a_usage_error_and_creates_nothing(worker_kind, tmp_path):
    out = tmp_path / "missing" / "deeper" / "plot.png"

    result = invoke("demo", *fleet_flag(worker_kind), "--out", str(out))

    line = error_line(result, 2)
    assert f"directory {out.parent} does not exist: create it first" in line
    assert not (tmp_path / "missing").exists()


def test_out_under_a_root_level_directory_that_does_not_exist(worker_kind):
    """The report of issue 16's user: ``--out /nonexistent/dir/x.png`` created /nonexistent."""
    assert not Path("/nonexistent").exists()

    result = invoke("demo", *fleet_flag(worker_kind), "--out", "/nonexistent/dir/x.png")

    assert "directory /nonexistent/dir does not exist" in error_line(result, 2)
    assert not Path("/nonexistent").exists()


def test_out_that_is_a_directory_is_a_usage_error(tmp_path):
    assert "is a directory" in error_line(invoke("demo", "--out", str(tmp_path)), 2)


# ------------------------------------------------------------------------ --mnist DIR

MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (30, 28, 28),
    "train-labels-idx1-ubyte.gz": (30,),
    "t10k-images-idx3-ubyte.gz": (5, 28, 28),
    "t10k-labels-idx1-ubyte.gz": (5,),
}


def write_idx(path: Path, shape: tuple[int, ...]) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, len(shape))
    header += b"".join(struct.pack(">I", size) for size in shape)
    data = np.random.default_rng(0).integers(0, 10, shape, dtype=np.uint8)
    with gzip.open(path, "wb") as handle:
        handle.write(header + data.tobytes())


def write_mnist(directory: Path, skip: str | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, shape in MNIST_FILES.items():
        if name != skip:
            write_idx(directory / name, shape)


def test_mnist_dir_that_does_not_exist(worker_kind, tmp_path):
    result = invoke("demo", *fleet_flag(worker_kind), "--mnist", str(tmp_path / "nope"))

    line = error_line(result, 2)
    assert "Invalid value for '--mnist'" in line and "does not exist" in line


def test_mnist_dir_without_the_files_names_all_four(worker_kind, tmp_path):
    result = invoke("demo", *fleet_flag(worker_kind), "--mnist", str(tmp_path))

    line = error_line(result, 2)
    assert f"{tmp_path} lacks train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], " in line
    assert "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]" in line
    assert "must be in that directory itself" in line


def test_mnist_files_in_a_subfolder_are_not_used(worker_kind, tmp_path):
    """They were found by a recursive search before, even in another folder under /tmp."""
    write_mnist(tmp_path / "raw")

    result = invoke("demo", *fleet_flag(worker_kind), "--mnist", str(tmp_path))

    line = error_line(result, 2)
    assert f"{tmp_path} lacks train-images-idx3-ubyte[.gz]" in line
    assert (
        f"found train-images-idx3-ubyte in {tmp_path / 'raw'}: use --mnist {tmp_path / 'raw'}"
        in line
    )


def test_mnist_dir_missing_one_file_names_that_file(tmp_path):
    write_mnist(tmp_path, skip="t10k-labels-idx1-ubyte.gz")

    line = error_line(invoke("demo", "--mnist", str(tmp_path)), 2)

    assert f"{tmp_path} lacks t10k-labels-idx1-ubyte[.gz]:" in line
    assert "train-images" not in line


def test_mnist_file_that_is_not_idx_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"<html>not found</html>"))

    line = error_line(invoke("demo", "--mnist", str(tmp_path)), 2)

    assert f"{tmp_path / 'train-labels-idx1-ubyte.gz'} is not an MNIST IDX file" in line


def test_mnist_images_and_labels_must_agree(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", (29,))

    line = error_line(invoke("demo", "--mnist", str(tmp_path)), 2)

    assert "holds 30 images but" in line and "29 labels" in line


# ------------------------------------------------------------------------ worker ids, bench


@pytest.mark.parametrize("args", [["worker", "b@d"], ["up", "bob", "b@d"], ["worker", "bob alice"]])
def test_a_bad_worker_id_is_a_usage_error(args):
    line = error_line(invoke(*args), 2)

    assert "cannot be part of a queue name: use letters, digits" in line


def test_up_refuses_the_same_worker_twice():
    line = error_line(invoke("up", "bob", "alice", "bob"), 2)

    assert "bob given more than once" in line


def test_bench_fleet_sections_need_fleet():
    line = error_line(invoke("bench", "--only", "demo-soak"), 2)

    assert "demo-soak runs on a fleet: add --fleet" in line


def test_bench_unknown_section_and_json_in_a_missing_directory(tmp_path):
    assert "Invalid value for '--only'" in error_line(invoke("bench", "--only", "soak"), 2)
    line = error_line(invoke("bench", "--json", str(tmp_path / "no" / "figures.json")), 2)
    assert "Invalid value for '--json'" in line and "does not exist" in line


def test_unknown_command_and_option_are_one_line_too():
    assert "No such command 'demos'" in error_line(invoke("demos"), 2)
    line = error_line(invoke("demo", "--round", "3"), 2)
    assert "No such option '--round'. (Did you mean one of: '--out', '--rounds'?) See" in line


# ------------------------------------------------------------------------ the environment


def closed_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--fleet", "--no-progress"],
        ["worker", "bob"],
        ["bench", "--fleet", "--only", "fleet"],
    ],
    ids=["demo", "worker", "bench"],
)
def test_an_unreachable_broker_is_one_line(args, tmp_path):
    port = closed_port()

    result = run_cli(
        *args,
        env={
            "TENSORFLEET_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{port}//",
            "TENSORFLEET_CONNECT_RETRIES": "0",
        },
        cwd=tmp_path,
    )

    line = error_line(result, 1)
    assert f"Cannot talk to the broker at amqp://guest:**@127.0.0.1:{port}//" in line
    assert "Start RabbitMQ (or point TENSORFLEET_BROKER_URL at a running one)" in line
    assert list(tmp_path.iterdir()) == []  # no plot, no file of any kind


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--fleet", "--no-progress"],
        ["worker", "bob"],
        ["bench", "--fleet", "--only", "fleet"],
    ],
    ids=["demo", "worker", "bench"],
)
def test_a_bad_timeout_setting_is_one_line_naming_the_variable(args, tmp_path):
    result = run_cli(*args, env={"TENSORFLEET_TIMEOUT": "soon"}, cwd=tmp_path)

    line = error_line(result, 1)
    assert "TENSORFLEET_TIMEOUT='soon' is not valid: expected a positive number of seconds" in line


def test_an_os_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    """Writing the plot to /dev/full fails with ENOSPC after training: a runtime error."""
    args = ["demo", "--rounds", "1", "--local-epochs", "1", "--no-progress", "--out", "/dev/full"]

    plain = run_cli(*args, cwd=tmp_path)
    debug = run_cli("--debug", *args, cwd=tmp_path)

    line = error_line(plain, 1)
    assert "[Errno 28] No space left on device" in line
    assert "tensorfleet --debug" in line
    assert "final test accuracy" in plain.stdout  # it failed after training, at the plot
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("OSError: [Errno 28]")
