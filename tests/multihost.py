"""Several hosts on one machine: network namespaces on a bridge, each with its own IP.

Use :func:`multihost_fleet`::

    with multihost_fleet(("bob", "alice", "secure_worker"), timeout=5.0) as hosts:
        bob = sy.FleetWorker(hook, id="bob")   # this process reaches the broker host via the bridge
        hosts.cut("bob"); hosts.restore("bob") # bob's host loses, then regains, its link
        hosts.kill_owner("bob"); hosts.start_owner("bob")  # its worker and its Redis crash, restart
        hosts.run_client(script)               # Python code on the client host

What it builds (``tf<tag>`` is random per run, so runs on one machine never meet):

=================  ==========================================================================
host (namespace)   what runs there
=================  ==========================================================================
``broker``         a private RabbitMQ node (its own epmd, database, cookie) listening on the
                   host's IP, port 5672; ``guest`` may log in from other hosts. With
                   ``brokers=3``: hosts ``broker0`` to ``broker2``, whose nodes
                   (``rabbit@<ip>``, one cookie) join one cluster; clients use the last,
                   workers get all of them as a ``;`` list (and fail over);
                   :meth:`MultiHost.kill_broker` crashes one
``<worker id>``    one per data owner (and the aggregator): its own ``redis-server`` on the
                   host's IP, port 6379, AOF on (``appendfsync always``), and its
                   ``tensorfleet worker <id>`` (``worker.runner.start_worker_process`` under
                   ``ip netns exec``), with ``TENSORFLEET_REDIS_URL`` its own Redis; the
                   last worker gets ``TENSORFLEET_BROKER_URL`` as a list whose first URL
                   has no broker (the client host), so it must fail over (one broker);
                   ``queue_type`` sets ``TENSORFLEET_QUEUE_TYPE`` for everyone
``client``         nothing resident: :meth:`MultiHost.run_client` runs a client script there
=================  ==========================================================================

Each host has a veth pair: ``eth0`` inside, the other end (``tf<tag><n>``) on the bridge
``tfb<tag>`` in the root namespace. Cutting a host is ``ip link set tf<tag><n> down``.
The bridge has an address too (``.1``): this pytest process, in the root namespace, is a
client whose connections go through the bridge to the broker host's IP, so tests can use
``sy.FleetWorker`` directly and catch its exceptions; the ``client`` host shows the same
from a namespace of its own, where 127.0.0.1 has no broker and no Redis. Nothing here
connects to the shared servers on 127.0.0.1.

Teardown (also after a failed test or a failed start) kills every process in every
namespace of the run by pid (``ip netns pids``: the servers, epmd, the workers),
deletes the namespaces (which removes their veth pairs), the bridge and the folder.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet_fixture import REPO, RunningFleet
from private_servers import RABBITMQ_BIN, START_TIMEOUT, RabbitNode, _wait_for_line, stop

from broker.settings import get_settings
from client.fleet import reset_fleet_transport

AMQP_PORT = 5672
REDIS_PORT = 6379
#: Seconds processes of a namespace get after SIGTERM before SIGKILL at teardown.
KILL_GRACE = 10.0


def ip(*args: str) -> str:
    """Run ``ip ARGS`` (iproute2); its output. Fails with ip's message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Host:
    """One network namespace: its name, its IP on the bridge and its veth's root-side end."""

    name: str
    netns: str
    address: str
    veth: str

    def wrap(self) -> tuple[str, ...]:
        """The command prefix that runs a program on this host (it execs in place)."""
        return ("ip", "netns", "exec", self.netns)


class Network:
    """A bridge in the root namespace and hosts (namespaces) on it, on a /24 of their own."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.bridge = f"tfb{self.tag}"
        self.prefix = self._free_prefix()
        self.hosts: dict[str, Host] = {}
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.prefix}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    @staticmethod
    def _free_prefix() -> str:
        """A 10.251.x.0/24 that no interface of the root namespace uses."""
        used = ip("-o", "-4", "addr")
        candidates = list(range(256))
        random.shuffle(candidates)
        for third in candidates:
            prefix = f"10.251.{third}"
            if f" {prefix}." not in used:
                return prefix
        raise RuntimeError("no free 10.251.x.0/24 for the test hosts")

    @property
    def gateway(self) -> str:
        """The bridge's own address: where this (root namespace) process appears from."""
        return f"{self.prefix}.1"

    def add_host(self, name: str) -> Host:
        number = len(self.hosts)
        host = Host(
            name=name,
            netns=f"tf{self.tag}-{name}",
            address=f"{self.prefix}.{number + 10}",
            veth=f"tf{self.tag}{number}",
        )
        self.hosts[name] = host  # registered first: teardown removes a half-made host too
        ip("netns", "add", host.netns)
        ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        ip("link", "set", host.veth, "master", self.bridge, "up")
        ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.netns, "link", "set", "eth0", "up")
        ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def cut(self, name: str) -> None:
        """Take ``name``'s link down: its packets go nowhere, its sockets stay open."""
        ip("link", "set", self.hosts[name].veth, "down")

    def restore(self, name: str) -> None:
        ip("link", "set", self.hosts[name].veth, "up")

    def close(self) -> None:
        """Kill every process left in the hosts, delete the namespaces and the bridge."""
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                kill_namespace_processes(host.netns)
            with contextlib.suppress(Exception):
                ip("netns", "del", host.netns)  # its veth pair goes with it
        with contextlib.suppress(Exception):
            ip("link", "del", self.bridge)


def namespace_pids(netns: str) -> list[int]:
    """Live (not zombie) processes in ``netns``."""
    try:
        listed = ip("netns", "pids", netns).split()
    except RuntimeError:
        return []
    pids = []
    for text in listed:
        try:
            state = Path(f"/proc/{text}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            pids.append(int(text))
    return pids


def kill_namespace_processes(netns: str) -> None:
    """SIGTERM every process in ``netns`` (all started by this run), SIGKILL what stays."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in namespace_pids(netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + KILL_GRACE
        while namespace_pids(netns) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a condition (processes gone) with a deadline
        if not namespace_pids(netns):
            return


#: Erlang cookie of every node of a run's cluster (the nodes are the run's own, on its bridge).
COOKIE = "TENSORFLEETMULTIHOSTTESTS"


def start_rabbitmq(host: Host, folder: Path) -> tuple[RabbitNode, subprocess.Popen[bytes]]:
    """A RabbitMQ node on ``host`` listening on its IP; ready when ``rabbitmqctl wait`` returns.

    ``rabbitmqctl`` must run on the same host (it finds the node through that host's
    epmd), so :attr:`RabbitNode.ctl` is not used; see :func:`rabbitmqctl`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    name = f"rabbit@{host.address}"  # a long name: other hosts' nodes reach it by its IP
    cookie = folder / ".erlang.cookie"
    cookie.write_text(COOKIE)
    cookie.chmod(0o400)
    conf = folder / "rabbitmq.conf"
    conf.write_text(f"listeners.tcp.1 = {host.address}:{AMQP_PORT}\nloopback_users.guest = false\n")
    (folder / "enabled_plugins").write_text("[].\n")
    (folder / "rabbitmq-env.conf").write_text("")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
        "HOME": str(folder),
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_USE_LONGNAME": "true",
        "RABBITMQ_NODE_PORT": str(AMQP_PORT),
        "RABBITMQ_DIST_PORT": "25672",
        "RABBITMQ_CONFIG_FILE": str(conf),
        "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_PID_FILE": str(folder / "node.pid"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
    }
    process = subprocess.Popen(
        [*host.wrap(), str(RABBITMQ_BIN / "rabbitmq-server")],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    node = RabbitNode(name, AMQP_PORT, env)
    rabbitmqctl(host, node, "wait", str(folder / "node.pid"), "--timeout", "120")
    return node, process


def rabbitmqctl(host: Host, node: RabbitNode, *args: str) -> str:
    done = subprocess.run(
        [*host.wrap(), str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-l", "-n", node.name, *args],
        env=node.env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=True,
    )
    return done.stdout


def start_redis(host: Host, folder: Path) -> subprocess.Popen[bytes]:
    """``redis-server`` on ``host``'s IP with AOF on; returns once it accepts connections."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        *host.wrap(),
        shutil.which("redis-server") or "redis-server",
        *("--bind", host.address, "--port", str(REDIS_PORT), "--protected-mode", "no"),
        *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
        *("--dir", str(folder)),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for_line(process, b"Ready to accept connections", START_TIMEOUT)
    except BaseException:
        stop(process)
        raise
    return process


class MultiHost:
    """A fleet spread over hosts: see the module docstring."""

    def __init__(
        self,
        worker_ids: Sequence[str],
        timeout: float,
        root: Path,
        brokers: int = 1,
        queue_type: str = "classic",
    ) -> None:
        self.worker_ids = tuple(worker_ids)
        self.broker_count = brokers
        self.queue_type = queue_type
        self.brokers: list[Host] = []
        self.rabbits: list[tuple[RabbitNode, subprocess.Popen[bytes]]] = []
        self.timeout = timeout
        self.root = root
        self.namespace = f"tfmh-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.network = Network()
        self.redis: dict[str, subprocess.Popen[bytes]] = {}
        self.fleet: RunningFleet | None = None
        self._saved_env: dict[str, str | None] = {}

    # ------------------------------------------------------------------ set-up
    def start(self) -> None:
        names = (
            ["broker"]
            if self.broker_count == 1
            else [f"broker{i}" for i in range(self.broker_count)]
        )
        self.brokers = [self.network.add_host(name) for name in names]
        self.broker = self.brokers[-1]  # the node clients use
        self.client = self.network.add_host("client")
        for worker_id in self.worker_ids:
            self.network.add_host(worker_id)
        for host in self.brokers:
            self.rabbits.append(start_rabbitmq(host, self.root / host.name))
        first = self.rabbits[0][0]
        for host, (node, _) in zip(self.brokers[1:], self.rabbits[1:], strict=True):
            rabbitmqctl(host, node, "stop_app")
            rabbitmqctl(host, node, "join_cluster", first.name)
            rabbitmqctl(host, node, "start_app")
        for worker_id in self.worker_ids:
            self.redis[worker_id] = start_redis(self.host(worker_id), self.redis_dir(worker_id))
        self.fleet = RunningFleet(
            self.worker_ids,
            self.namespace,
            {**os.environ, **self.client_env()},
            self.root / "logs",
            worker_env={w: self.worker_env(w) for w in self.worker_ids},
            worker_wrapper={w: self.host(w).wrap() for w in self.worker_ids},
            purge_on_close=False,
        )
        self.fleet.log_dir.mkdir(parents=True, exist_ok=True)
        # this process is a client too: its connections go through the bridge
        for name, value in self.client_env().items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value
        get_settings.cache_clear()
        reset_fleet_transport()
        for worker_id in self.worker_ids:
            self.fleet.start(worker_id, wait=False)
        self.fleet.wait_ready()

    @property
    def broker_url(self) -> str:
        """The broker clients use (the last node of a cluster)."""
        return self.node_url(self.broker)

    @staticmethod
    def node_url(host: Host) -> str:
        return f"amqp://guest:guest@{host.address}:{AMQP_PORT}//"

    def kill_broker(self, number: int) -> None:
        """SIGKILL every process of broker host ``number`` (a node crash)."""
        kill_namespace_processes(self.brokers[number].netns)

    def host(self, worker_id: str) -> Host:
        return self.network.hosts[worker_id]

    def redis_url(self, worker_id: str) -> str:
        return f"redis://{self.host(worker_id).address}:{REDIS_PORT}/0"

    def redis_dir(self, worker_id: str) -> Path:
        return self.root / "redis" / worker_id

    def client_env(self) -> dict[str, str]:
        """What a client of this fleet sets, on any host."""
        return {
            "TENSORFLEET_BROKER_URL": self.broker_url,
            "TENSORFLEET_NAMESPACE": self.namespace,
            "TENSORFLEET_TIMEOUT": f"{self.timeout:g}",
            "TENSORFLEET_QUEUE_TYPE": self.queue_type,
            # a client never needs a store; this one names no server on 127.0.0.1
            "TENSORFLEET_REDIS_URL": f"redis://{self.broker.address}:1/0",
        }

    def worker_env(self, worker_id: str) -> dict[str, str]:
        env = {
            **self.client_env(),
            "TENSORFLEET_REDIS_URL": self.redis_url(worker_id),
            "OMP_NUM_THREADS": "1",
        }
        if self.broker_count > 1:  # every node of the cluster, in order: workers fail over
            env["TENSORFLEET_BROKER_URL"] = ";".join(self.node_url(host) for host in self.brokers)
        elif worker_id == self.worker_ids[-1]:
            # the last worker is given the broker as a list whose first node does not
            # answer (nothing listens on the client host): it must fail over to the second
            dead = f"amqp://guest:guest@{self.client.address}:{AMQP_PORT}//"
            env["TENSORFLEET_BROKER_URL"] = f"{dead};{self.broker_url}"
        return env

    # ------------------------------------------------------------------ faults
    def cut(self, worker_id: str) -> None:
        """``worker_id``'s host loses its link (worker and Redis keep running, unreachable)."""
        self.network.cut(worker_id)

    def restore(self, worker_id: str) -> None:
        self.network.restore(worker_id)

    def kill_owner(self, worker_id: str) -> None:
        """SIGKILL the host's worker and its Redis (a crash of the whole data owner)."""
        assert self.fleet is not None
        self.fleet.kill(worker_id)
        process = self.redis.pop(worker_id)
        process.kill()
        process.wait()

    def start_owner(self, worker_id: str) -> None:
        """Start the host's Redis (it replays its AOF), then its worker; wait for a ping."""
        assert self.fleet is not None
        self.redis[worker_id] = start_redis(self.host(worker_id), self.redis_dir(worker_id))
        self.fleet.start(worker_id, wait=True)

    def wait_answers(self, worker_id: str, deadline: float) -> float:
        """Ping ``worker_id`` until it answers; the monotonic time it did. Fails at ``deadline``."""
        assert self.fleet is not None
        while time.monotonic() < deadline:
            if self.fleet.ping(worker_id, min(1.0, max(deadline - time.monotonic(), 0.01))):
                return time.monotonic()
        raise AssertionError(
            f"worker {worker_id} did not answer a ping by the deadline:\n{self.log_tail(worker_id)}"
        )

    def run_client(
        self, script: str, timeout: float = 120.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run Python ``script`` on the client host with the fleet's client settings (+ ``env``)."""
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TENSORFLEET_")},
            **self.client_env(),
            "PYTHONPATH": str(REPO),
            **(env or {}),
        }
        return subprocess.run(
            [*self.client.wrap(), sys.executable, "-c", script],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log_tail(self, worker_id: str) -> str:
        assert self.fleet is not None
        return self.fleet.log_tail(worker_id, lines=80)

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stop everything this run started and remove every namespace, link and folder."""
        reset_fleet_transport()  # this process's client goes first: no reconnects to a gone broker
        if self.fleet is not None:
            for worker_id in self.worker_ids:
                with contextlib.suppress(Exception):
                    self.restore(worker_id)  # a cut worker could not finish a warm shutdown
            with contextlib.suppress(Exception):
                self.fleet.close()
        for process in self.redis.values():
            with contextlib.suppress(Exception):
                stop(process)
        for host, (node, process) in zip(self.brokers, self.rabbits, strict=False):
            if process.poll() is None:
                with contextlib.suppress(Exception):
                    rabbitmqctl(host, node, "stop")
            with contextlib.suppress(Exception):
                stop(process)
        self.network.close()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()
        reset_fleet_transport()


@contextlib.contextmanager
def multihost_fleet(
    worker_ids: Sequence[str], timeout: float = 5.0, brokers: int = 1, queue_type: str = "classic"
) -> Iterator[MultiHost]:
    """Broker host(s), a host per worker id (Redis + worker), a client host: see the module doc."""
    root = Path(tempfile.mkdtemp(prefix="tfmultihost-"))
    hosts = MultiHost(worker_ids, timeout, root, brokers=brokers, queue_type=queue_type)
    try:
        hosts.start()
        yield hosts
    finally:
        try:
            hosts.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


__all__ = ["Host", "MultiHost", "Network", "multihost_fleet"]
