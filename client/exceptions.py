"""Every TensorFleet error, for ``from client.exceptions import ...`` (defined in broker.errors)."""

from broker.errors import (
    BrokerConnectionError,
    ConfigurationError,
    ContentDisallowedError,
    ForbiddenOperationError,
    GetRequiredError,
    InvalidTensorForRemoteGet,
    MalformedMessageError,
    MessageTooLargeError,
    ObjectNotFoundError,
    PlanNotBuiltError,
    RemoteExecutionError,
    TensorFleetError,
    TensorsNotCollocatedException,
    UnknownCommandError,
    WorkerUnavailableError,
)

__all__ = [
    "BrokerConnectionError",
    "ConfigurationError",
    "ContentDisallowedError",
    "ForbiddenOperationError",
    "GetRequiredError",
    "InvalidTensorForRemoteGet",
    "MalformedMessageError",
    "MessageTooLargeError",
    "ObjectNotFoundError",
    "PlanNotBuiltError",
    "RemoteExecutionError",
    "TensorFleetError",
    "TensorsNotCollocatedException",
    "UnknownCommandError",
    "WorkerUnavailableError",
]
