"""Private RabbitMQ and Redis servers for tests that must configure or restart a server.

The shared servers on 5672 and 6379 belong to every run on the machine; a test that
needs a TLS listener, definitions loaded at boot or an ACL file gets servers of its
own here, in a temporary directory, on free ports, and stops them at the end.

* :func:`private_redis`: ``redis-server`` with the given arguments; ready once it
  logs "Ready to accept connections".
* :func:`private_rabbitmq`: a second RabbitMQ node (its own node name, ports,
  database, logs, config file and cookie, no plugins), run as root from
  ``/usr/lib/rabbitmq/bin`` with ``HOME`` in the temporary directory (the Debian
  wrappers would switch to the rabbitmq user); ready when ``rabbitmqctl wait``
  returns.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_line(process: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """Read the process's output until it holds ``marker``; everything read so far.

    Reads the pipe's descriptor directly: a buffered ``readline`` would hold lines that
    ``select`` no longer reports.
    """
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} within {timeout:g} s:\n{seen.decode()}")
        ready, _, _ = select.select([descriptor], [], [], left)
        if ready:
            chunk = os.read(descriptor, 65536)
            if not chunk:
                raise AssertionError(f"the server exited:\n{seen.decode()}")
            seen += chunk
    return seen


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def private_redis(folder: Path, arguments: Sequence[str] = ()) -> Iterator[int]:
    """A ``redis-server`` on a free port (``--port``; more in ``arguments``); yields the port.

    With ``--port 0`` in ``arguments`` (a TLS-only server) the yielded port is 0.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        shutil.which("redis-server") or "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
        *arguments,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for_line(process, b"Ready to accept connections", START_TIMEOUT)
        yield port
    finally:
        stop(process)


@dataclass(frozen=True)
class RabbitNode:
    """A private RabbitMQ node: its name, its AMQP port and its environment (for rabbitmqctl)."""

    name: str
    port: int
    env: dict[str, str]

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=True,
        )
        return done.stdout


@contextlib.contextmanager
def private_rabbitmq(
    folder: Path, config: Sequence[str] = (), plain: bool = True
) -> Iterator[RabbitNode]:
    """A RabbitMQ node of its own; ``config`` lines are added to its rabbitmq.conf.

    Its plain AMQP listener is on 127.0.0.1 at :attr:`RabbitNode.port` (none without
    ``plain``: a TLS-only node); more listeners (TLS) and ``load_definitions`` come
    through ``config``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port, dist_port = free_port(), free_port()
    name = f"tfpriv-{uuid.uuid4().hex[:8]}@localhost"
    conf = folder / "rabbitmq.conf"
    listener = f"listeners.tcp.local = 127.0.0.1:{port}" if plain else "listeners.tcp = none"
    conf.write_text("\n".join([listener, *config]) + "\n")
    (folder / "enabled_plugins").write_text("[].\n")
    (folder / "rabbitmq-env.conf").write_text("")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
        "HOME": str(folder),
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_CONFIG_FILE": str(conf),
        "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_PID_FILE": str(folder / "node.pid"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
    }
    process = subprocess.Popen(
        [str(RABBITMQ_BIN / "rabbitmq-server")],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    node = RabbitNode(name, port, env)
    try:
        # waits for the node to write its pid file, then for it to have booted
        node.ctl("wait", str(folder / "node.pid"), "--timeout", "120")
        yield node
    finally:
        with contextlib.suppress(Exception):
            node.ctl("stop")
        stop(process)
