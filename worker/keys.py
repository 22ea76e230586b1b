"""Every Redis key a worker uses, built in one place.

All keys start with ``<namespace>:<worker>:`` (the namespace is
``TENSORFLEET_NAMESPACE``, ``tensorfleet`` by default), so workers, fleets and
test runs sharing one Redis never see each other's data, and ``keys.pattern``
finds everything of one worker.

================================================  ======  =======================================
key                                               type    value
================================================  ======  =======================================
``tensorfleet:<worker>:objects``                  hash    object id -> record: ``T`` + safetensors
                                                          bytes (a tensor, with its grad), ``P`` +
                                                          msgpack PointerRecord, ``N`` + msgpack
                                                          plan data (broker.plan_format), ``V`` +
                                                          msgpack value (a list of results...), or
                                                          ``L`` + the number of parts of a large
                                                          tensor
``tensorfleet:<worker>:tensor:<id>``              list    the safetensors bytes of a tensor above
                                                          ``TENSORFLEET_MAX_MESSAGE_BYTES``, in
                                                          parts (Redis values stop at 512 MiB)
``tensorfleet:<worker>:failures``                 hash    object id -> msgpack ``{type, message,
                                                          command}`` of the command that failed to
                                                          create it
``tensorfleet:<worker>:owners``                   hash    object or failure id -> the principal that
                                                          owns it (a RabbitMQ user, or ``@operator``
                                                          for datasets the worker's operator hosts)
``tensorfleet:<worker>:quarantine``               hash    ``<hash>:<field>`` -> msgpack ``[reason,
                                                          record]`` of a record the worker could not
                                                          load: moved aside, never served, kept for
                                                          the operator to inspect
``tensorfleet:<worker>:batch:<sender>:<batch>``   string  msgpack list of the outgoing messages
                                                          ``[kind, address, body]`` of an applied
                                                          batch, for replay on redelivery; expires
                                                          after ``TENSORFLEET_BATCH_TTL`` s
================================================  ======  =======================================

Ids in hash fields and key names are decimal strings.
"""

from __future__ import annotations


def _prefix(namespace: str, worker_id: str) -> str:
    return f"{namespace}:{worker_id}"


def objects(namespace: str, worker_id: str) -> str:
    """Hash of every object's record (small tensors inline)."""
    return f"{_prefix(namespace, worker_id)}:objects"


def tensor_parts(namespace: str, worker_id: str, obj_id: int) -> str:
    """List of the parts of one large tensor."""
    return f"{_prefix(namespace, worker_id)}:tensor:{obj_id}"


def failures(namespace: str, worker_id: str) -> str:
    """Hash of failure markers of pipelined commands."""
    return f"{_prefix(namespace, worker_id)}:failures"


def owners(namespace: str, worker_id: str) -> str:
    """Hash of the owner (principal) of every object and failure marker."""
    return f"{_prefix(namespace, worker_id)}:owners"


def quarantine(namespace: str, worker_id: str) -> str:
    """Hash of records moved aside because they could not be loaded."""
    return f"{_prefix(namespace, worker_id)}:quarantine"


def batch(namespace: str, worker_id: str, batch_key: str) -> str:
    """Marker of an applied batch, holding what it sent."""
    return f"{_prefix(namespace, worker_id)}:batch:{batch_key}"


def pattern(namespace: str, worker_id: str = "*") -> str:
    """A SCAN pattern matching every key of ``worker_id`` (default: of every worker)."""
    return f"{namespace}:{worker_id}:*"
