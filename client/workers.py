"""Client-side worker handles: ``VirtualWorker`` (in-process) and ``FleetWorker`` (a real fleet).

A handle is a name plus a session: it queues commands and asks questions; the
objects live on the worker. One handle exists per worker id and session, so a
second ``VirtualWorker(hook, id="bob")`` is the same object and sees the same
store, as in PySyft.
"""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

from broker import protocol
from broker.errors import TensorFleetError, WorkerNotFoundException, WorkerUnavailableError
from broker.protocol import PointerRecord
from client.session import Session
from client.unsupported import WORKER_OPTIONS, check_options

#: worker options TensorFleet reads itself (the rest of PySyft's are checked by check_options)
_OWN_OPTIONS = frozenset({"is_client_worker", "data"})


class StoredPointer:
    """How a pointer kept *on* a worker shows in ``worker._objects``."""

    def __init__(self, holder: str, key: int, record: PointerRecord) -> None:
        self.holder = holder
        self.key = key
        self.location = record.location
        self.id_at_location = record.id_at_location
        self.garbage_collect_data = record.owns

    def __repr__(self) -> str:
        return (
            f"(Wrapper)>[PointerTensor | {self.holder}:{self.key} -> "
            f"{self.location}:{self.id_at_location}]"
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StoredPointer)
            and other.location == self.location
            and other.id_at_location == self.id_at_location
        )

    __hash__ = None  # type: ignore[assignment]


class BaseWorker:
    """A worker as the client sees it."""

    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __new__(cls, hook: Any = None, id: str = "", **options: Any) -> BaseWorker:
        session = cls._session()
        existing = session.workers.get(id)
        if existing is not None and type(existing) is cls:
            return existing
        if existing is not None:
            raise RuntimeError(
                f"A {type(existing).__name__} with id {id!r} already exists; a worker id names "
                "one worker, so pick another id for this one."
            )
        return super().__new__(cls)

    def __init__(self, hook: Any = None, id: str = "", **options: Any) -> None:
        check_options(
            f"sy.{type(self).__name__}",
            {name: value for name, value in options.items() if name not in _OWN_OPTIONS},
            WORKER_OPTIONS,
        )
        if isinstance(id, str) and id:
            _latest_made[id] = self
        if getattr(self, "session", None) is not None:
            return  # the same worker, created again by id
        if not isinstance(id, str) or not id:
            raise ValueError(
                "a worker needs a non-empty string id: sy.VirtualWorker(hook, id='bob')"
            )
        self.id = id
        self.hook = hook
        self.is_client_worker = bool(options.get("is_client_worker", False))
        #: counts backward() calls sent here; a cleared .grad stays None until the next one
        self.backward_epoch = 0
        self.session: Session = self._session()
        self.session.workers[id] = self
        self._connect()

    @classmethod
    def _session(cls) -> Session:
        raise NotImplementedError

    def _connect(self) -> None:
        """Make sure the worker exists (in-process: create its engine)."""

    # -- the session, for pointers ---------------------------------------------------------
    def _enqueue(self, command: list[Any] | tuple[Any, ...]) -> None:
        self.session.enqueue(self.id, command)

    def _finalize_delete(self, obj_id: int, route: tuple[str, ...] | None = None) -> None:
        self.session.enqueue_from_finalizer(self.id, (protocol.DELETE, obj_id), route)

    def _request(
        self,
        command: list[Any],
        label: str,
        watch: tuple[str, ...] = (),
        timeout: float | None = None,
    ) -> Any:
        return self.session.request(self.id, command, label, watch, timeout)

    @property
    def remote(self) -> Any:
        """``bob.remote.torch.zeros(2, 3)``: a tensor made on this worker; returns its pointer."""
        from client.factories import Remote

        return Remote(self)

    # -- PySyft's worker registry (every worker of a session already knows every other) --
    def add_worker(self, worker: BaseWorker) -> BaseWorker:
        """Make ``worker`` known to this one (for PySyft code: it already is); returns self."""
        return self.add_workers([worker])

    def add_workers(self, workers: Any) -> BaseWorker:
        """Make each of ``workers`` known to this one; returns self."""
        for worker in workers:
            if not isinstance(worker, BaseWorker):
                raise TypeError(
                    f"add_workers() takes workers (sy.VirtualWorker, sy.FleetWorker), not "
                    f"{type(worker).__name__}: bob.add_workers([alice, secure_worker])"
                )
            if worker.session is not self.session:  # another kind: not found by session
                self.__dict__.setdefault("_added_workers", {})[worker.id] = worker
        return self

    def get_worker(self, id_or_worker: Any, fail_hard: bool = True) -> BaseWorker:
        """The worker of that id (or the worker itself); WorkerNotFoundException if unknown.

        PySyft returned the id string for an unknown id unless ``fail_hard``, which failed
        later with "'str' object has no attribute ..."; TensorFleet always raises here.
        """
        if isinstance(id_or_worker, BaseWorker):
            return id_or_worker
        worker_id = str(id_or_worker)
        found = self.__dict__.get("_added_workers", {}).get(worker_id)
        if found is None and self.is_client_worker:
            # "me" knows every worker made, the latest of each id (PySyft's auto_add)
            found = _latest_made.get(worker_id)
        if found is None:
            found = self.session.workers.get(worker_id)
        if found is None:
            raise WorkerNotFoundException(self.id, worker_id)
        return found

    # -- what users call ---------------------------------------------------------------------
    @property
    def _objects(self) -> dict[int, Any]:
        """Every object on the worker, fetched now: ``{id: tensor or stored pointer}``."""
        objects = self._request([protocol.OBJECTS, None], "_objects")
        return {
            key: StoredPointer(self.id, key, value) if isinstance(value, PointerRecord) else value
            for key, value in objects.items()
        }

    def object_count(self, timeout: float | None = None) -> int:
        """How many objects the worker holds (``timeout``: wait at most this long)."""
        return int(self._request([protocol.COUNT, None], "count", timeout=timeout))

    def clear_objects(self, return_self: bool = True) -> BaseWorker | None:
        """Forget every object on the worker (pointers to them dangle); returns the worker."""
        self._request([protocol.CLEAR, None], "clear_objects")
        return self if return_self else None

    def fetch_plan(self, plan_id: int | str, location: Any = None, copy: bool = False) -> Any:
        """The plan kept under ``plan_id`` (or tagged so) on this worker (or ``location``).

        ``bob.fetch_plan(ptr_plan.id_at_location)``, or PySyft's
        ``me.fetch_plan(plan_id, bob, copy=False)``. The worker keeps its copy and the
        result is always a copy (``copy`` is accepted for PySyft's signature). Only the
        plan's owner may fetch it (PermissionDeniedError otherwise).
        """
        from client.plan_fetch import fetch_plan

        if type(copy) is not bool:
            raise TypeError(f"copy must be True or False, not {copy!r}")
        return fetch_plan(self if location is None else location, plan_id)

    def search(self, *query: Any) -> list[Any]:
        """``bob.search("#digits", "#data")``: pointers to the objects whose tags hold every item.

        An int in the query names an object id. Only objects the caller may use are
        found: its own, and data the worker's operator hosts (``ptr.private``: compute on
        it, fetch results, never ``.get()``/``.move()``/``.send()`` it). The pointers have
        garbage collection off, so dropping one never deletes the data (client/hosted.py).
        """
        from client.hosted import search

        return search(self, query)

    def request_search(self, *query: Any, location: Any) -> list[Any]:
        """``me.request_search("#fun", location=bob)``: PySyft's spelling of ``bob.search``."""
        if not isinstance(location, BaseWorker):
            raise TypeError(
                f"location must be a worker (bob, not {location!r:.40}): the search runs there"
            )
        return location.search(*query)

    def synchronize(self) -> None:
        """Wait until the worker has run every command sent so far (raises their errors)."""
        self.session.synchronize(self.id)

    def wait_ready(self, timeout: float | None = None) -> BaseWorker:
        """Return the worker once it answers; an in-process worker always does."""
        self.synchronize()
        return self

    def __getitem__(self, obj_id: int) -> Any:
        return self._objects.get(obj_id)

    def __repr__(self) -> str:
        try:
            count: Any = self.object_count(timeout=REPR_TIMEOUT)
        except TensorFleetError:  # a repr must not raise: an unreachable worker shows as '?'
            count = "?"
        return f"<{type(self).__name__} id:{self.id} #objects:{count}>"

    __str__ = __repr__


#: the longest ``repr(worker)`` waits for the worker's object count before showing '?'
REPR_TIMEOUT = 1.0

#: worker id -> the worker last made (or named again) with it, of either kind
_latest_made: dict[str, BaseWorker] = {}
_in_process_session: Session | None = None
_fleet_session: Session | None = None


class VirtualWorker(BaseWorker):
    """A worker in this process: the same engine as the fleet, no servers.

    ``data=[tensors]`` hosts tensors as the worker operator's private data, as
    ``tensorfleet worker --dataset`` does on a fleet (see :meth:`load_data`).
    """

    def __init__(self, hook: Any = None, id: str = "", data: Any = None, **options: Any) -> None:
        super().__init__(hook, id, **options)
        if data is not None:
            self.load_data(data)

    def load_data(self, data: Any) -> list[int]:
        """Host ``data`` (local tensors, with their ``.tag()``s and ``.describe()``) privately.

        The worker keeps a copy of each, owned by its operator: found with ``search``,
        usable by every client, never fetched, moved or sent. A tensor is kept under
        ``t.id`` (set here when it has none), so hosting it again replaces it. Returns
        the ids, in order.
        """
        from client.hosted import hosted_tensors
        from client.inprocess import InProcessTransport

        transport = self.session.transport
        assert isinstance(transport, InProcessTransport)
        engine = transport.hub.engine(self.id)
        hosted = hosted_tensors(data)
        for tensor in hosted:
            engine.host(tensor)
        return [tensor.obj_id for tensor in hosted]

    @classmethod
    def _session(cls) -> Session:
        global _in_process_session
        with cls._lock:
            if _in_process_session is None:
                from client.inprocess import Hub, InProcessTransport

                session = Session(InProcessTransport(Hub()), timeout=0.0)
                session.worker_factory = lambda worker_id: VirtualWorker(None, id=worker_id)
                _in_process_session = session
            return _in_process_session

    def _connect(self) -> None:
        from client.inprocess import InProcessTransport

        transport = self.session.transport
        assert isinstance(transport, InProcessTransport)
        transport.hub.engine(self.id)


class FleetWorker(BaseWorker):
    """Worker ``id`` of a running fleet (``tensorfleet worker <id>``), reached through RabbitMQ."""

    @classmethod
    def _session(cls) -> Session:
        global _fleet_session
        with cls._lock:
            from broker.settings import get_settings
            from client.fleet import get_fleet_transport

            transport = get_fleet_transport()
            # a new transport (settings changed, or the old one was closed) means a new
            # conversation: pointers of the old one point into a fleet we no longer reach
            if _fleet_session is None or _fleet_session.transport is not transport:
                if _fleet_session is not None:
                    _fleet_session.close()
                settings = get_settings()
                session = Session(
                    transport,
                    timeout=settings.timeout,
                    batch_size=settings.batch_size,
                    flush_interval=settings.flush_interval,
                )
                session.worker_factory = lambda worker_id: FleetWorker(None, id=worker_id)
                # replies are believed only from workers this session talks to
                transport.expected_workers = session.workers.__contains__
                _fleet_session = session
            return _fleet_session

    def wait_ready(self, timeout: float | None = None) -> FleetWorker:
        """Return once this worker consumes its queue and answers a ping; returns the worker.

        Asks RabbitMQ for the queue's consumers (a passive declare: nothing is sent to a
        worker that is not there), with a bounded backoff between questions, then pings.
        After ``timeout`` (default ``TENSORFLEET_TIMEOUT``) it raises the
        WorkerUnavailableError that says why: never started, not running, store down.
        """
        from broker.backoff import Backoff

        timeout = self.session.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        backoff = Backoff(maximum=0.5)
        transport = self.session.transport
        while True:
            left = deadline - time.monotonic()
            state = transport.worker_state(self.id, max(left, 1.0))
            if state is None or state.serving:
                self.session.request(self.id, [protocol.PING, None], "ping", timeout=max(left, 1.0))
                return self
            if left <= 0:
                self.session._check_worker(self.id, "wait_ready", deadline)
                raise WorkerUnavailableError(self.id, "wait_ready", timeout)
            time.sleep(min(backoff.next_delay(), max(left, 0.0)))


def local_worker() -> VirtualWorker:
    """The client's own worker, "me", as in PySyft."""
    return VirtualWorker(None, id="me", is_client_worker=True)
