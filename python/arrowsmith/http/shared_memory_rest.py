"""Triton's system shared memory API over REST: `GET /v2/systemsharedmemory/status` and
`/region/{name}/status`, `POST /v2/systemsharedmemory/region/{name}/register` (a JSON
object of `key`, `offset` and `byte_size`) and `/unregister`, and `POST
/v2/systemsharedmemory/unregister` (every region). The regions are the process's one
registry, which the gRPC front's RPCs and both fronts' inference requests use too. Errors
are V2's `{"error": message}`."""

from __future__ import annotations

from typing import Any

import orjson

from arrowsmith import _native
from arrowsmith.errors import InvalidInputError
from arrowsmith.http.asgi import Request, Response
from arrowsmith.http.v2_rest import json_response


def _document(request: Request) -> dict[str, Any]:
    try:
        document = orjson.loads(request.body or b"{}")
    except orjson.JSONDecodeError as error:
        raise InvalidInputError(f"the request body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidInputError("the request body must be a JSON object")
    return document


def _count(document: dict[str, Any], field: str, default: int | None) -> int:
    value = document.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"`{field}` must be a whole number of bytes, 0 or more")
    return value


def status(request: Request, name: str = "") -> Response:
    regions = _native.shared_memory_status(name)
    return json_response(
        [
            {"name": region, "key": key, "offset": offset, "byte_size": size}
            for region, key, offset, size in regions
        ]
    )


def register(request: Request, name: str) -> Response:
    document = _document(request)
    key = document.get("key")
    if not isinstance(key, str):
        raise InvalidInputError('`key` must name the shared memory object, e.g. "/input0"')
    offset = _count(document, "offset", 0)
    byte_size = _count(document, "byte_size", None)
    _native.register_shared_memory(name, key, offset, byte_size)
    return json_response({})


def unregister(request: Request, name: str = "") -> Response:
    _native.unregister_shared_memory(name)
    return json_response({})
