"""The V2 (Open Inference Protocol) REST endpoints: health, metadata and infer, answering
what the gRPC service answers. Errors are `{"error": message}` with the status of
`arrowsmith.errors.HTTP_STATUS`."""

from __future__ import annotations

import asyncio
import time
import zlib
from concurrent.futures import Executor
from typing import Any

import orjson

from arrowsmith import metrics
from arrowsmith.dataplane import DataPlane
from arrowsmith.errors import HTTP_STATUS, ArrowsmithError, ErrorCode, InvalidInputError
from arrowsmith.http.asgi import BodyTooLargeError, Request, Response, refused
from arrowsmith.http.v2_codec import (
    HEADER_LENGTH,
    OutputForm,
    parse_infer_request,
    render_infer_response,
)
from arrowsmith.models.signature import TensorMetadata

PROTOCOL = "rest"
#: Bodies up to this size are parsed, and their answers rendered, on the event loop (tens
#: of microseconds); bigger ones on the thread pool, so the loop keeps moving bytes.
INLINE_BODY_LIMIT = 64 * 1024
#: Beyond what the data plane offers, the REST front speaks Triton's binary tensor data.
REST_EXTENSIONS = ("binary_tensor_data",)


def json_response(document: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(document))


def error_response(error: ArrowsmithError) -> Response:
    return refused(json_response({"error": error.message}, HTTP_STATUS[error.code]), error)


def decompressed(request: Request, limit: int) -> bytes:
    """The body, inflated when tritonclient compressed it (Content-Encoding gzip/deflate),
    to at most `limit` bytes."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return request.body
    windows = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
    if encoding not in windows:
        raise InvalidInputError(f"Content-Encoding '{encoding}' is not gzip, deflate or identity")
    inflater = zlib.decompressobj(windows[encoding])
    try:
        body = inflater.decompress(request.body, limit)
    except zlib.error as error:
        raise InvalidInputError(f"the body is not valid {encoding}: {error}") from None
    if inflater.unconsumed_tail:
        raise BodyTooLargeError(
            f"the inflated request body exceeds the limit of {limit} bytes (--max-message-size)"
        )
    return body


def _tensor(t: TensorMetadata) -> dict[str, Any]:
    return {
        "name": t.name,
        "datatype": t.datatype,
        "shape": list(t.shape),
        "parameters": {"content_type": t.content_type},
    }


class V2Rest:
    def __init__(self, dataplane: DataPlane, max_body_size: int, executor: Executor) -> None:
        self.dataplane = dataplane
        self.max_body_size = max_body_size
        #: Where big bodies are parsed and their answers rendered, off the event loop.
        self._executor = executor

    def server_metadata(self, request: Request) -> Response:
        metadata = self.dataplane.server_metadata()
        return json_response(
            {
                "name": metadata.name,
                "version": metadata.version,
                "extensions": [*metadata.extensions, *REST_EXTENSIONS],
            }
        )

    def live(self, request: Request) -> Response:
        return json_response({"live": True})

    def ready(self, request: Request) -> Response:
        ready = self.dataplane.ready
        status = 200 if ready else HTTP_STATUS[ErrorCode.MODEL_NOT_READY]
        return json_response({"ready": ready}, status)

    def model_metadata(self, request: Request, name: str, version: str) -> Response:
        try:
            model = self.dataplane.model(name, version)
        except ArrowsmithError as error:
            return error_response(error)
        return json_response(
            {
                "name": model.name,
                "versions": model.versions,
                "platform": "mlflow",
                "inputs": [_tensor(t) for t in model.inputs],
                "outputs": [_tensor(t) for t in model.outputs],
                "properties": model.properties,
            }
        )

    def model_config(self, request: Request, name: str, version: str) -> Response:
        """Triton's model configuration as JSON (proto field names; dims as numbers, the way
        Triton writes them), for perf_analyzer and tritonclient.http's get_model_config."""
        from google.protobuf.json_format import MessageToDict

        from arrowsmith.models.triton_config import model_config

        try:
            model = self.dataplane.model(name, version)
        except ArrowsmithError as error:
            return error_response(error)
        document = MessageToDict(model_config(model), preserving_proto_field_name=True)
        for tensor in (*document.get("input", []), *document.get("output", [])):
            tensor["dims"] = [int(d) for d in tensor.get("dims", [])]
        return json_response(document)

    def model_ready(self, request: Request, name: str, version: str) -> Response:
        try:
            model = self.dataplane.model(name, version)
        except ArrowsmithError as error:
            return error_response(error)
        return json_response({"name": model.name, "ready": True})

    async def infer(self, request: Request, name: str, version: str) -> Response:
        """Runs on the event loop; a body over INLINE_BODY_LIMIT is parsed and its answer
        rendered on the thread pool. The wait for the batch holds no thread."""
        inline = len(request.body) <= INLINE_BODY_LIMIT
        loop = asyncio.get_running_loop()
        label = name if name in self.dataplane.repository.names() else ""
        try:
            if inline:
                request_bytes, form = self._parse(request, name, version, label)
            else:
                request_bytes, form = await loop.run_in_executor(
                    self._executor, self._parse, request, name, version, label
                )
        except ArrowsmithError as error:
            metrics.count_request(label, PROTOCOL, error.code.value)
            return error_response(error)
        try:
            response_bytes = await self.dataplane.infer_async(request_bytes, PROTOCOL)
        except ArrowsmithError as error:
            return error_response(error)
        if inline:
            return self._render(response_bytes, form, label)
        return await loop.run_in_executor(self._executor, self._render, response_bytes, form, label)

    def _parse(
        self, request: Request, name: str, version: str, label: str
    ) -> tuple[bytes, OutputForm]:
        started = time.perf_counter()
        body = decompressed(request, self.max_body_size)
        header_length = request.headers.get(HEADER_LENGTH)
        parsed = parse_infer_request(body, header_length, name, version)
        metrics.observe_stage(label, PROTOCOL, "parse", time.perf_counter() - started)
        return parsed

    def _render(self, response_bytes: bytes, form: OutputForm, label: str) -> Response:
        started = time.perf_counter()
        body, binary_from = render_infer_response(response_bytes, form)
        metrics.observe_stage(label, PROTOCOL, "render", time.perf_counter() - started)
        if binary_from is None:
            return Response(200, body)
        headers = ((HEADER_LENGTH, str(binary_from)),)
        return Response(200, body, "application/octet-stream", headers)
