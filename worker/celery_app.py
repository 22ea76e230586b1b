"""The Celery app of a fleet worker: configuration, the one task, and the start-up signals.

Start a worker with ``tensorfleet worker bob`` or with plain Celery::

    celery -A worker.celery_app worker -P solo -Q tensorfleet.worker.bob

(the worker id comes from ``TENSORFLEET_WORKER_ID`` or from the one worker queue
given with ``-Q``). Messages are msgpack only; nothing is ever unpickled.

The worker is three parts, each in its own module:

* this module: how Celery is configured, the ``tensorfleet.execute`` task, and the
  signals that start the runtime;
* :mod:`worker.runtime`: what happens to one message, in order (run, publish,
  commit to Redis, acknowledge), written down there as one state machine;
* :mod:`worker.gate`: what is refused before the task runs, and the Celery
  consumer, strategy and request classes that do it.

Two kinds of caller are served: TensorFleet clients and workers send task
messages with ``ignore_result`` set and read replies from their own reply queue;
a plain Celery caller (``send_task("tensorfleet.execute", args=[body],
queue="tensorfleet.worker.bob").get()``) gets the reply envelope as the task's
result through the ``rpc://`` backend.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from celery import Celery, signals

from broker import topology
from broker.amqp import FORWARD_HEADER, RESEND_HEADER, TASK_NAME
from broker.errors import ConfigurationError
from broker.settings import Settings, get_settings
from broker.tls import kombu_ssl
from worker import control  # noqa: F401  (registers the tensorfleet_status inspect command)
from worker import runtime as runtime_module
from worker.gate import refuse_compressed_bodies
from worker.runtime import Arrival, Runtime

log = logging.getLogger(__name__)


def make_app(settings: Settings) -> Celery:
    """The worker's Celery app, configured from ``settings``."""
    app = Celery("tensorfleet", set_as_current=False)
    app.conf.update(
        # several URLs (TENSORFLEET_BROKER_URL="amqp://a//;amqp://b//"): kombu fails over
        broker_url=list(settings.broker_urls),
        broker_connection_retry_on_startup=True,
        result_backend="rpc://",
        result_persistent=False,
        task_serializer="msgpack",
        result_serializer="msgpack",
        accept_content=["msgpack"],
        result_accept_content=["msgpack"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_create_missing_queues=True,
        # TENSORFLEET_QUEUE_TYPE: the worker's own queue is declared with this type
        # (broker/topology.py worker_queue_arguments); quorum queues need no global QoS,
        # which Celery detects (worker_detect_quorum_queues, on by default)
        task_create_missing_queue_type=settings.queue_type,
        worker_prefetch_multiplier=settings.prefetch,
        worker_pool="solo",
        worker_concurrency=1,
        worker_consumer="worker.gate:FleetConsumer",
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Celery's control and event traffic stays inside the namespace: other apps'
        # broadcasts on the broker-wide "celery.pidbox" never reach a fleet's workers, and
        # `celery -A worker.celery_app inspect ...` and Flower (-A worker.celery_app) talk
        # to exactly the workers of TENSORFLEET_NAMESPACE
        control_exchange=topology.control_exchange_prefix(settings.namespace),
        event_exchange=topology.event_exchange(settings.namespace),
        # After a network partition the worker reconnects while RabbitMQ still holds its
        # old connection (it learns of its death only once the link is back). An exclusive
        # pidbox queue (Celery's default) is still locked by that connection, and Celery
        # treats the RESOURCE_LOCKED on redeclaring it as unrecoverable: the worker exits
        # (tests/test_multihost.py, link cut). Non-exclusive, it is still auto-deleted
        # (and expires 10 s after its last consumer).
        control_queue_exclusive=False,
        worker_send_task_events=settings.task_events,
        task_send_sent_event=False,
        # amqps://: verify the broker against TENSORFLEET_TLS_CA_FILE (broker/tls.py)
        broker_use_ssl=kombu_ssl(settings),
    )
    return app


app = make_app(get_settings())


def get_runtime() -> Runtime:
    """This process's runtime, started from TENSORFLEET_WORKER_ID if the signal did not."""
    runtime = runtime_module.current()
    if runtime is not None:
        return runtime
    settings = get_settings()
    if settings.worker_id is None:
        raise ConfigurationError(
            "TENSORFLEET_WORKER_ID",
            "",
            "the id of this worker, or start it with `tensorfleet worker <id>`",
        )
    return runtime_module.start(app, settings.worker_id, settings)


#: Celery loggers that write a line or two per task at INFO: a fleet worker runs one
#: task per batch, so at INFO they cost more than small batches themselves.
_PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.worker.request")


@signals.after_setup_logger.connect
def _quiet_per_task_logs(loglevel: Any = None, **_: Any) -> None:
    """Keep Celery's per-task lines out of the log unless the worker runs at DEBUG."""
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    if not isinstance(level, int) or level > logging.DEBUG:
        for name in _PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@signals.celeryd_after_setup.connect
def _on_worker_setup(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Find this worker's id (env or ``-Q``) and load its objects before consuming starts."""
    if instance is None or instance.app is not app:
        return
    settings = get_settings()
    worker_id = settings.worker_id
    if worker_id is None:
        names = list(instance.app.amqp.queues.consume_from or {})
        found = (topology.worker_id_from_queue(name, settings.namespace) for name in names)
        ids = [worker_id for worker_id in found if worker_id]
        if len(ids) != 1:
            raise ConfigurationError(
                "TENSORFLEET_WORKER_ID",
                "",
                "a worker id: set it, or consume exactly one "
                f"{topology.worker_queue('<id>', settings.namespace)} queue with -Q "
                f"(got {names})",
            )
        worker_id = ids[0]
    # a worker runs one small op at a time; torch's default of a thread per core only
    # makes several workers on one machine contend (a FedAvg round went from 0.3 s to 5-18 s)
    torch.set_num_threads(settings.torch_threads)
    refuse_compressed_bodies()
    runtime = runtime_module.start(app, worker_id, settings)
    if settings.metrics_port:
        from worker.metrics import serve

        serve(runtime, settings.metrics_port)


@app.task(
    name=TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=False,
    typing=False,
    Strategy="worker.gate:fleet_strategy",
    Request="worker.gate:FleetRequest",
)
def execute(self: Any, body: bytes, chunk: list[Any] | None = None) -> bytes | None:
    """Run one envelope (or one part of a chunked one) on this worker: see worker.runtime."""
    request = self.request
    arrival = Arrival(
        chunk=chunk,
        direct=bool(getattr(request, "ignore_result", False)),
        forwarded=bool(getattr(request, FORWARD_HEADER, False)),
        # a client's resend is a redelivery too: the batch is looked up before it runs
        redelivered=bool((request.delivery_info or {}).get("redelivered", True))
        or bool(getattr(request, RESEND_HEADER, False)),
        headers={key: value for key, value in vars(request).items() if key.startswith("x-")},
        user_id=(getattr(request, "properties", None) or {}).get("user_id") or None,
    )
    return get_runtime().run(body, arrival)
