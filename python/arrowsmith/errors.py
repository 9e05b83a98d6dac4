"""The error hierarchy, shared with the native module, and the one table per transport.

Each exception carries an `ErrorCode`; front ends look the code up here and never choose a
status themselves. This module imports no transport library: the tables hold names and
numbers.
"""

from __future__ import annotations

import enum


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


#: gRPC status names (members of `grpc.StatusCode`) by error code.
GRPC_STATUS: dict[ErrorCode, str] = {
    ErrorCode.INVALID_INPUT: "INVALID_ARGUMENT",
    ErrorCode.UNSUPPORTED_INPUT: "UNIMPLEMENTED",
    ErrorCode.MODEL_NOT_FOUND: "NOT_FOUND",
    ErrorCode.MODEL_NOT_READY: "UNAVAILABLE",
    ErrorCode.QUEUE_FULL: "RESOURCE_EXHAUSTED",
    ErrorCode.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
    ErrorCode.CANCELLED: "CANCELLED",
    ErrorCode.MODEL_ERROR: "INTERNAL",
    ErrorCode.INTERNAL: "INTERNAL",
}

#: HTTP status codes by error code.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.UNSUPPORTED_INPUT: 501,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.MODEL_NOT_READY: 503,
    ErrorCode.QUEUE_FULL: 429,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    # nginx's "client closed request": nobody is left to read it.
    ErrorCode.CANCELLED: 499,
    ErrorCode.MODEL_ERROR: 500,
    ErrorCode.INTERNAL: 500,
}

#: MLflow's error code names (`mlflow.protos.databricks_pb2`) for the MLflow scoring protocol
#: (/invocations), where MLflow's own table then gives the HTTP status, as
#: `mlflow models serve` answers: whatever a model raises is BAD_REQUEST there, and so here.
MLFLOW_ERROR_CODE: dict[ErrorCode, str] = {
    ErrorCode.INVALID_INPUT: "INVALID_PARAMETER_VALUE",
    ErrorCode.UNSUPPORTED_INPUT: "NOT_IMPLEMENTED",
    ErrorCode.MODEL_NOT_FOUND: "RESOURCE_DOES_NOT_EXIST",
    ErrorCode.MODEL_NOT_READY: "TEMPORARILY_UNAVAILABLE",
    ErrorCode.QUEUE_FULL: "RESOURCE_EXHAUSTED",
    ErrorCode.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
    ErrorCode.CANCELLED: "CANCELLED",
    ErrorCode.MODEL_ERROR: "BAD_REQUEST",
    ErrorCode.INTERNAL: "INTERNAL_ERROR",
}


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
