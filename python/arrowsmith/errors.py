"""The error hierarchy, shared with the native module, and the one table of statuses.

Each exception carries an `ErrorCode`; front ends look the code up here and never choose a
status themselves. This module imports no transport library: the tables hold names and
numbers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorCode(enum.Enum):
    INVALID_INPUT = "INVALID_INPUT"
    UNSUPPORTED_INPUT = "UNSUPPORTED_INPUT"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    MODEL_NOT_READY = "MODEL_NOT_READY"
    QUEUE_FULL = "QUEUE_FULL"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    MODEL_ERROR = "MODEL_ERROR"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class Statuses:
    """How one error code answers on each transport."""

    #: A member of `grpc.StatusCode`, by name.
    grpc: str
    #: The V2 REST status.
    http: int
    #: MLflow's error code name (`mlflow.protos.databricks_pb2`) for the MLflow scoring
    #: protocol (/invocations), where MLflow's own table then gives the HTTP status, as
    #: `mlflow models serve` answers: whatever a model raises is BAD_REQUEST there, and so here.
    mlflow: str


#: The one table of error codes to statuses. The HTTP fronts read it; the native gRPC front
#: keeps the gRPC column in Rust, and a test checks that the two agree.
STATUSES: dict[ErrorCode, Statuses] = {
    ErrorCode.INVALID_INPUT: Statuses("INVALID_ARGUMENT", 400, "INVALID_PARAMETER_VALUE"),
    ErrorCode.UNSUPPORTED_INPUT: Statuses("UNIMPLEMENTED", 501, "NOT_IMPLEMENTED"),
    ErrorCode.MODEL_NOT_FOUND: Statuses("NOT_FOUND", 404, "RESOURCE_DOES_NOT_EXIST"),
    ErrorCode.MODEL_NOT_READY: Statuses("UNAVAILABLE", 503, "TEMPORARILY_UNAVAILABLE"),
    ErrorCode.QUEUE_FULL: Statuses("RESOURCE_EXHAUSTED", 429, "RESOURCE_EXHAUSTED"),
    ErrorCode.DEADLINE_EXCEEDED: Statuses("DEADLINE_EXCEEDED", 504, "DEADLINE_EXCEEDED"),
    # nginx's "client closed request": nobody is left to read it.
    ErrorCode.CANCELLED: Statuses("CANCELLED", 499, "CANCELLED"),
    ErrorCode.MODEL_ERROR: Statuses("INTERNAL", 500, "BAD_REQUEST"),
    ErrorCode.INTERNAL: Statuses("INTERNAL", 500, "INTERNAL_ERROR"),
}

#: Views of `STATUSES` for the HTTP fronts.
HTTP_STATUS: dict[ErrorCode, int] = {code: s.http for code, s in STATUSES.items()}
MLFLOW_ERROR_CODE: dict[ErrorCode, str] = {code: s.mlflow for code, s in STATUSES.items()}


class ArrowsmithError(Exception):
    """Base of every error a client can be told about."""

    code = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(ArrowsmithError):
    """The request breaks the protocol or the model's signature; `input_name` names the
    tensor or column at fault when there is one. Raised by the native module too."""

    code = ErrorCode.INVALID_INPUT

    def __init__(self, message: str, input_name: str | None = None) -> None:
        super().__init__(message)
        self.input_name = input_name


class UnsupportedError(ArrowsmithError):
    """A well-formed request for something Arrowsmith does not offer."""

    code = ErrorCode.UNSUPPORTED_INPUT


class ModelNotFoundError(ArrowsmithError):
    code = ErrorCode.MODEL_NOT_FOUND


class ModelNotReadyError(ArrowsmithError):
    code = ErrorCode.MODEL_NOT_READY


class QueueFullError(ArrowsmithError):
    """The model's queue holds max_queue_size requests: back-pressure, retry later."""

    code = ErrorCode.QUEUE_FULL


class DeadlineExceededError(ArrowsmithError):
    code = ErrorCode.DEADLINE_EXCEEDED


class CancelledError(ArrowsmithError):
    code = ErrorCode.CANCELLED


class ModelError(ArrowsmithError):
    """The model itself raised; the message is the model's."""

    code = ErrorCode.MODEL_ERROR


class InternalError(ArrowsmithError):
    """A fault on the server's side, e.g. a prediction that cannot be encoded."""

    code = ErrorCode.INTERNAL
