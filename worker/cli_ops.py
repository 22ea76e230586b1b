"""``tensorfleet status`` and ``tensorfleet dead-letters``: an operator's view of a fleet.

``status`` broadcasts the ``tensorfleet_status`` inspect command (worker/control.py)
on the namespace's control exchange and asks RabbitMQ for each worker queue's
depth and consumers (a passive declare, which creates nothing). A worker that does
not answer is shown down, with its queue if it has one. ``dead-letters`` lists the
messages the namespace's workers refused, with the reason each carries, and can
purge them.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import click

from broker import topology
from broker.settings import get_settings


def _queue_state(channel_factory: Any, name: str) -> tuple[int, int] | None:
    """(messages, consumers) of queue ``name``, or None if it does not exist."""
    channel = channel_factory()
    try:
        declared = channel.queue_declare(queue=name, passive=True)
    except Exception:  # NOT_FOUND closes the channel: the queue does not exist
        return None
    finally:
        with contextlib.suppress(Exception):  # already closed by the broker
            channel.close()
    return int(declared.message_count), int(declared.consumer_count)


@contextlib.contextmanager
def _broker_errors() -> Iterator[None]:
    """kombu's and the socket layer's errors, as the BrokerConnectionError users know."""
    import kombu.exceptions

    from broker.amqp import safe_url
    from broker.errors import BrokerConnectionError

    try:
        yield
    except (kombu.exceptions.OperationalError, OSError) as error:
        url = safe_url(get_settings().broker_url)
        raise BrokerConnectionError(url, str(error).rstrip(".") or type(error).__name__) from None


def collect_status(worker_ids: tuple[str, ...], timeout: float) -> list[dict[str, Any]]:
    """One entry per worker: the status it reported (if up), its queue depth and consumers."""
    with _broker_errors():
        return _collect_status(worker_ids, timeout)


def _collect_status(worker_ids: tuple[str, ...], timeout: float) -> list[dict[str, Any]]:
    from worker.celery_app import app

    settings = get_settings()
    replies = app.control.broadcast("tensorfleet_status", reply=True, timeout=timeout)
    reported: dict[str, dict[str, Any]] = {}
    for reply in replies or []:
        for status in reply.values():
            if isinstance(status, dict) and "worker" in status:
                reported[str(status["worker"])] = status
    rows = []
    with app.connection_for_write() as connection:
        for worker_id in sorted(set(worker_ids) | set(reported)):
            queue = _queue_state(
                connection.channel, topology.worker_queue(worker_id, settings.namespace)
            )
            status = reported.get(worker_id)
            rows.append(
                {
                    "worker": worker_id,
                    "up": status is not None,
                    "queue_messages": None if queue is None else queue[0],
                    "queue_consumers": None if queue is None else queue[1],
                    **(status or {}),
                }
            )
    return rows


def _size(value: Any) -> str:
    if not isinstance(value, int):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


@click.command()
@click.option("--workers", default="", help="Comma-separated worker ids to report even if down.")
@click.option("--timeout", default=2.0, show_default=True, help="Seconds to wait for answers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(workers: str, timeout: float, as_json: bool) -> None:
    """Which workers are up, what they hold (per client), their queues and refusals."""
    ids = tuple(w.strip() for w in workers.split(",") if w.strip())
    for worker_id in ids:
        topology.worker_queue(worker_id)  # a bad id is a usage error, not a broker error
    rows = collect_status(ids, timeout)
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    header = (
        f"{'worker':<16} {'state':<6} {'uptime':>8} {'objects':>8} {'bytes':>10} "
        f"{'queue':>6} {'messages':>9}  refusals"
    )
    click.echo(header)
    click.echo("-" * len(header))
    for row in rows:
        state = "up" if row["up"] else "down"
        if row["up"] and not row.get("store_up", True):
            state = "no-rd"  # up, but its Redis is unreachable: not consuming
        uptime = f"{row['uptime_s']:.0f}s" if "uptime_s" in row else "-"
        queue = "-" if row["queue_messages"] is None else str(row["queue_messages"])
        refusals = ", ".join(f"{k} {v}" for k, v in sorted(row.get("refusals", {}).items())) or "-"
        click.echo(
            f"{row['worker']:<16} {state:<6} {uptime:>8} {row.get('objects', '-')!s:>8} "
            f"{_size(row.get('bytes')):>10} {queue:>6} {row.get('messages', '-')!s:>9}  {refusals}"
        )
        for client, held in sorted(row.get("clients", {}).items()):
            click.echo(
                f"{'':<16}   client {client}: {held['objects']} objects, {_size(held['bytes'])}"
            )


@click.command("dead-letters")
@click.option("--limit", default=50, show_default=True, help="Show at most this many.")
@click.option("--purge", is_flag=True, help="Delete the messages shown (they are kept otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
def dead_letters(limit: int, purge: bool, as_json: bool) -> None:
    """The messages this namespace's workers refused, with why; --purge deletes them."""
    from worker.celery_app import app

    settings = get_settings()
    name = topology.dead_letter_queue(settings.namespace)
    found: list[dict[str, Any]] = []
    with _broker_errors(), app.connection_for_write() as connection:
        if _queue_state(connection.channel, name) is None:
            click.echo(f"no dead-letter queue {name} yet: nothing was refused")
            return
        channel: Any = connection.channel()
        tags = []
        while len(found) < limit:
            message = channel.basic_get(queue=name, no_ack=False)
            if message is None:
                break
            headers = message.headers or {}
            tags.append(message.delivery_tag)
            found.append(
                {
                    "reason": str(headers.get(topology.REASON_HEADER, "?")),
                    "origin": str(headers.get(topology.ORIGIN_HEADER, "?")),
                    "bytes": len(message.body),
                    "content_type": message.content_type,
                }
            )
        for tag in tags:
            if purge:
                channel.basic_ack(tag)
            else:
                channel.basic_reject(tag, requeue=True)
        channel.close()
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        for entry in found:
            click.echo(f"{entry['origin']}  {entry['bytes']:>9} B  {entry['reason']}")
        verb = "purged" if purge else "kept"
        click.echo(
            f"{len(found)} refused message(s) shown and {verb} ({time.strftime('%H:%M:%S')})"
        )
