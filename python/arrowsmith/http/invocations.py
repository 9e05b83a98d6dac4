"""MLflow's scoring protocol, as `mlflow models serve` speaks it: POST /invocations (JSON,
CSV, Parquet), GET /ping, /health and /version, with MLflow's content-type rules, status
codes and `{"error_code", "message"}` errors.

Bodies are parsed by MLflow's own scoring-server helpers, so what is accepted, how it is
typed and how a refusal is worded are MLflow's; the parsed input then travels as a V2
request through the same data plane as gRPC, and the answer is rebuilt into the object the
model returned and written by MLflow's `predictions_to_json`."""

from __future__ import annotations

import asyncio
import io
import json
import time
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from arrowsmith import metrics
from arrowsmith.dataplane import DataPlane
from arrowsmith.errors import HTTP_STATUS, MLFLOW_ERROR_CODE, ArrowsmithError, ErrorCode
from arrowsmith.http import mlflow_codec, split_fast_path
from arrowsmith.http.asgi import JSON, Disconnect, Request, Response, refused
from arrowsmith.http.scoring_json import render, scoring_server

if TYPE_CHECKING:
    from arrowsmith.models.loaded import LoadedModel

PROTOCOL = "mlflow"
_TEXT = "text/plain; charset=utf-8"
_CSV = "text/csv"
_PARQUET = "application/vnd.apache.parquet"


def mlflow_error_response(error: Any) -> Response:
    """MLflow's serialized error with MLflow's status, without the server's stack trace."""
    document = json.loads(error.serialize_as_json())
    document.pop("stack_trace", None)
    return Response(error.get_http_status_code(), json.dumps(document).encode())


def error_response(error: ArrowsmithError) -> Response:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode as MlflowErrorCode

    code = MlflowErrorCode.Value(MLFLOW_ERROR_CODE[error.code])
    return refused(mlflow_error_response(MlflowException(error.message, error_code=code)), error)


def _unsupported_media(content_type: str | None) -> Response | None:
    """MLflow's 415 answers: a charset other than UTF-8, another parameter, another type."""
    server = scoring_server()
    mime, *options = (part.strip() for part in (content_type or "").split(";"))
    parameters = dict(option.partition("=")[::2] for option in options)
    if parameters.get("charset", "utf-8").lower() != "utf-8":
        return Response(415, b"The scoring server only supports UTF-8", _TEXT)
    unknown = set(parameters) - {"charset"}
    if unknown:
        message = (
            f"Unrecognized content type parameters: {', '.join(unknown)}. "
            f"{server.SCORING_PROTOCOL_CHANGE_INFO}"
        )
        return Response(415, message.encode(), _TEXT)
    if mime not in server.CONTENT_TYPES:
        message = (
            "This predictor only supports the following content types: "
            f"Types: {server.CONTENT_TYPES}. Got '{content_type}'."
        )
        return Response(415, message.encode(), _TEXT)
    return None


def _parse(mime: str, body: bytes, model: LoadedModel) -> tuple[Any, Any, bool]:
    """(model input, params, whether the answer goes unwrapped), by MLflow's helpers."""
    server = scoring_server()
    schema = model.input_schema
    if mime == _CSV:
        try:
            text = body.decode()
        except UnicodeDecodeError as error:
            raise server.MlflowInvalidInputException(
                f"Ensure that input is a valid UTF-8 encoded string. Error: '{error!r}'"
            ) from error
        return server.parse_csv_input(io.StringIO(text), schema), None, False
    if mime == _PARQUET:
        return server.parse_parquet_input(io.BytesIO(body)), None, False
    parsed = server._parse_json_data(body, model.pyfunc.metadata, schema)
    return parsed.data, parsed.params, parsed.is_unified_llm_input


class MlflowScoring:
    def __init__(self, dataplane: DataPlane, default_model: str, executor: Executor) -> None:
        self.dataplane = dataplane
        #: /invocations serves the first configured model; /models/{name}/invocations any.
        self.default_model = default_model
        #: Where bodies that need MLflow's parser are answered, off the event loop.
        self._executor = executor
        #: Per model name: the model and its float columns when the split fast path fits it.
        self._split_columns: dict[str, tuple[LoadedModel, dict[str, Any] | None]] = {}

    def ping(self, request: Request) -> Response:
        ready = self.dataplane.ready
        return Response(200 if ready else HTTP_STATUS[ErrorCode.MODEL_NOT_READY], b"\n")

    def version(self, request: Request) -> Response:
        from mlflow.version import VERSION

        return Response(200, VERSION.encode())

    def _fast_split(self, mime: str, body: bytes, model: LoadedModel) -> bytes | None:
        if mime != JSON:
            return None
        cached = self._split_columns.get(model.name)
        if cached is None or cached[0] is not model:
            cached = (model, split_fast_path.column_dtypes(model))
            self._split_columns[model.name] = cached
        dtypes = cached[1]
        return None if dtypes is None else split_fast_path.request_bytes(body, model, dtypes)

    async def invocations(self, request: Request, name: str | None) -> Response:
        """Runs on the event loop. The common body (a numeric `dataframe_split`) is parsed
        here and its wait for the batch holds no thread; any other body is answered on the
        thread pool by `answer_parsed`, with MLflow's parser."""
        try:
            model = self.dataplane.model(name or self.default_model)
        except ArrowsmithError as error:
            metrics.count_request("", PROTOCOL, error.code.value)
            return error_response(error)
        content_type = request.headers.get("content-type")
        refusal = _unsupported_media(content_type)
        if refusal is not None:
            metrics.count_request(model.name, PROTOCOL, ErrorCode.INVALID_INPUT.value)
            return refusal
        mime = (content_type or "").split(";")[0].strip()
        started = time.perf_counter()
        request_bytes = self._fast_split(mime, request.body, model)
        if request_bytes is None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, self.answer_parsed, request.body, model, mime, request.disconnect
            )
        metrics.observe_stage(model.name, PROTOCOL, "parse", time.perf_counter() - started)
        try:
            response_bytes = await self.dataplane.infer_async(request_bytes, PROTOCOL)
        except ArrowsmithError as error:
            return error_response(error)
        return self._rendered(model, response_bytes, unwrapped=False)

    def _rendered(self, model: LoadedModel, response_bytes: bytes, unwrapped: bool) -> Response:
        started = time.perf_counter()
        body = render(mlflow_codec.predictions(response_bytes), unwrapped)
        metrics.observe_stage(model.name, PROTOCOL, "render", time.perf_counter() - started)
        return Response(200, body, JSON)

    def answer_parsed(
        self, body: bytes, model: LoadedModel, mime: str, disconnect: Disconnect | None = None
    ) -> Response:
        """Runs on the thread pool: MLflow's parsing, the wait for the batch (within the
        request timeout; the job is cancelled when the client goes away), rendering."""
        from mlflow.exceptions import MlflowException

        try:
            started = time.perf_counter()
            value, params, unwrapped = _parse(mime, body, model)
            request_bytes = mlflow_codec.request_bytes(value, params, model)
            metrics.observe_stage(model.name, PROTOCOL, "parse", time.perf_counter() - started)
        except MlflowException as error:
            metrics.count_request(model.name, PROTOCOL, ErrorCode.INVALID_INPUT.value)
            return mlflow_error_response(error)
        except ArrowsmithError as error:
            metrics.count_request(model.name, PROTOCOL, error.code.value)
            return error_response(error)
        try:
            response_bytes = self.dataplane.infer(
                request_bytes,
                self.dataplane.request_timeout,
                None if disconnect is None else disconnect.add,
                PROTOCOL,
            )
        except ArrowsmithError as error:
            return error_response(error)
        return self._rendered(model, response_bytes, unwrapped)
