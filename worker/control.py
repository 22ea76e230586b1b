"""Remote-control commands a fleet worker answers, the Celery way (``celery inspect``).

``tensorfleet_status`` returns :meth:`worker.runtime.Runtime.status`: objects and bytes
held (per client), messages and commands handled, refusals by kind, whether its
store is up. ``tensorfleet status`` broadcasts it on the namespace's control
exchange, so it reaches exactly the workers of ``TENSORFLEET_NAMESPACE``::

    celery -A worker.celery_app inspect tensorfleet_status
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import inspect_command

from worker import runtime as runtime_module


@inspect_command()
def tensorfleet_status(state: Any) -> dict[str, Any]:
    """This worker's status (see worker.runtime.Runtime.status)."""
    runtime = runtime_module.current()
    if runtime is None:
        return {"starting": True}
    return runtime.status()
