"""`arrowsmith.errors.STATUSES` is the one table of error codes to statuses: every place that
answers an error with a status (the native gRPC front, the grpcio servicer, V2 REST, the
MLflow scoring protocol, the native errors' codes) must agree with it."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
from arrowsmith import _native, errors
from arrowsmith.errors import STATUSES, ArrowsmithError, ErrorCode

#: One exception class per code: every code a client can be told about has one.
EXCEPTIONS: dict[ErrorCode, type[ArrowsmithError]] = {
    cls.code: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, ArrowsmithError) and cls is not ArrowsmithError
}

#: How each front answers each exception class, found in a process of its own: the fronts'
#: generated messages and tritonclient's (imported by the tests) cannot share one protobuf
#: descriptor pool.
FRONT_ANSWERS = """
import json
from arrowsmith import errors
from arrowsmith.http import invocations, v2_rest

answers = {}
for cls in vars(errors).values():
    if not isinstance(cls, type) or not issubclass(cls, errors.ArrowsmithError):
        continue
    if cls is errors.ArrowsmithError:
        continue
    rest = v2_rest.error_response(cls("boom"))
    scoring = invocations.error_response(cls("boom"))
    answers[cls.code.value] = {
        "rest": [rest.status, json.loads(rest.body)],
        "mlflow": [scoring.status, json.loads(scoring.body)["error_code"]],
    }
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def front_answers() -> dict[str, dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-c", FRONT_ANSWERS],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answers: dict[str, dict[str, object]] = json.loads(result.stdout.splitlines()[-1])
    return answers


def test_every_code_has_statuses_and_an_exception() -> None:
    assert set(STATUSES) == set(ErrorCode)
    assert set(EXCEPTIONS) == set(ErrorCode)
    for code, statuses in STATUSES.items():
        assert isinstance(getattr(grpc.StatusCode, statuses.grpc), grpc.StatusCode), code
        assert 400 <= statuses.http <= 599, code


def test_the_native_front_answers_as_the_table_says() -> None:
    native = _native.error_statuses()
    assert {name for name, _ in native} == {c.value for c in ErrorCode}
    for name, number in native:
        expected = getattr(grpc.StatusCode, STATUSES[ErrorCode(name)].grpc)
        assert number == expected.value[0], name


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_codes_cross_to_the_native_side_unchanged(code: ErrorCode) -> None:
    assert _native.native_error_code(code.value) == code.value


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_python_fronts_answer_as_the_table_says(
    code: ErrorCode, front_answers: dict[str, dict[str, object]]
) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode as MlflowErrorCode

    statuses = STATUSES[code]
    answered = front_answers[code.value]
    assert answered["rest"] == [statuses.http, {"error": "boom"}]
    mlflow_code = MlflowErrorCode.Value(statuses.mlflow)
    mlflow_status = MlflowException("boom", error_code=mlflow_code).get_http_status_code()
    assert answered["mlflow"] == [mlflow_status, statuses.mlflow]
