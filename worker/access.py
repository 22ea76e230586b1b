"""Who may do what with an object: principals, owners and the three kinds of access.

Every message runs on behalf of one *principal*: the RabbitMQ user that published
it (its ``user_id`` property, which RabbitMQ checks against the connection), or,
for work a worker forwards along a pointer chain, the principal the original
message ran for. Every object belongs to the principal whose command created it.

=========  ===============================================  ===========================
access     commands                                         who may
=========  ===============================================  ===========================
use        an op's inputs, a plan's inputs                  the owner; anyone, for a
                                                            dataset the operator hosts
take       get (also of .grad/.data), send_to (move,        the owner only; a hosted
           send onward), remote_get                         dataset: never
change     delete, setattr, an in-place op's target,        the owner only
           storing or computing under an existing id
=========  ===============================================  ===========================

``objects``, ``count`` and ``clear`` see only the caller's own objects. Datasets
a worker's operator loads at start-up belong to :data:`OPERATOR`, a principal no
RabbitMQ user can be (user names never start with ``@``).

:func:`allowed_to_get` answers PySyft's ``allowed_to_get`` from this table (the
``allowed_to_get`` command, ``ptr.allowed_to_get()``), so the answer and the
refusal (``GetNotPermittedError`` for hosted data) can never disagree.
"""

from __future__ import annotations

import enum

from broker.errors import GetNotPermittedError, PermissionDeniedError

#: the owner of datasets the worker's operator hosts (private: use only)
OPERATOR = "@operator"
#: the principal of a message that carries no ``user_id`` (a plain Celery caller)
ANONYMOUS = "@anonymous"


class Access(enum.Enum):
    """What a command wants to do with an object; see the module docstring."""

    USE = "use"
    TAKE = "take"
    CHANGE = "change"


_ACTIONS = {Access.USE: "use", Access.TAKE: "fetch or move", Access.CHANGE: "change or delete"}


def allowed_to_get(owner: str | None, principal: str) -> bool:
    """Whether ``principal`` may take (get, move, send on) an object owned by ``owner``.

    PySyft 0.2's ``allowed_to_get``: the owner's policy for its objects. A client's own
    objects may be taken; data the operator hosts may be used but never taken
    (``GetNotPermittedError``); another client's objects not even used.
    """
    try:
        check(owner, principal, Access.TAKE, 0, "")
    except (GetNotPermittedError, PermissionDeniedError):
        return False
    return True


def check(owner: str | None, principal: str, access: Access, obj_id: int, worker: str) -> None:
    """Raise unless ``principal`` may have ``access`` to an object owned by ``owner``."""
    if owner == principal or owner is None:
        return
    if owner == OPERATOR:
        if access is Access.USE:
            return
        if access is Access.TAKE:
            raise GetNotPermittedError(obj_id, worker)
    raise PermissionDeniedError(obj_id, worker, _ACTIONS[access])
