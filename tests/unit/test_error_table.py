"""`arrowsmith.errors.STATUSES` is the one table of error codes to statuses: every place that
answers an error with a status (the native gRPC front, the grpcio servicer, V2 REST, the
MLflow scoring protocol, the native errors' codes) must agree with it."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
import orjson
import pytest
from arrowsmith import _native, errors
from arrowsmith.errors import STATUSES, ArrowsmithError, ErrorCode
from arrowsmith.grpc import servicer
from arrowsmith.http import invocations, v2_rest

#: One exception class per code: every code a client can be told about has one.
EXCEPTIONS: dict[ErrorCode, type[ArrowsmithError]] = {
    cls.code: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, ArrowsmithError) and cls is not ArrowsmithError
}

#: Codes only Python raises (looking a model up happens before anything native waits).
PYTHON_ONLY = {ErrorCode.MODEL_NOT_FOUND}


def test_every_code_has_statuses_and_an_exception() -> None:
    assert set(STATUSES) == set(ErrorCode)
    assert set(EXCEPTIONS) == set(ErrorCode)
    for code, statuses in STATUSES.items():
        assert isinstance(getattr(grpc.StatusCode, statuses.grpc), grpc.StatusCode), code
        assert 400 <= statuses.http <= 599, code


def test_the_native_front_answers_as_the_table_says() -> None:
    native = _native.error_statuses()
    assert {name for name, _ in native} | {c.value for c in PYTHON_ONLY} == {
        c.value for c in ErrorCode
    }
    for name, number in native:
        expected = getattr(grpc.StatusCode, STATUSES[ErrorCode(name)].grpc)
        assert number == expected.value[0], name


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_codes_cross_to_the_native_side_unchanged(code: ErrorCode) -> None:
    crossed = _native.native_error_code(code.value)
    if code in PYTHON_ONLY:
        assert crossed == ErrorCode.INTERNAL.value
    else:
        assert crossed == code.value


class _Aborted(Exception):
    pass


class _Context:
    """What the servicer's abort needs of a grpc.ServicerContext."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.code = code
        raise _Aborted(details)


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_grpcio_servicer_answers_as_the_table_says(code: ErrorCode) -> None:
    context: Any = _Context()
    with pytest.raises(_Aborted, match="boom"):
        servicer._abort(context, EXCEPTIONS[code]("boom"))
    assert context.code == getattr(grpc.StatusCode, STATUSES[code].grpc)


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_v2_rest_answers_as_the_table_says(code: ErrorCode) -> None:
    response = v2_rest.error_response(EXCEPTIONS[code]("boom"))
    assert response.status == STATUSES[code].http
    assert orjson.loads(response.body) == {"error": "boom"}


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_invocations_answer_as_mlflow_would(code: ErrorCode) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode as MlflowErrorCode

    response = invocations.error_response(EXCEPTIONS[code]("boom"))
    mlflow_code = MlflowErrorCode.Value(STATUSES[code].mlflow)
    expected = MlflowException("boom", error_code=mlflow_code).get_http_status_code()
    assert response.status == expected
    assert orjson.loads(response.body)["error_code"] == STATUSES[code].mlflow
