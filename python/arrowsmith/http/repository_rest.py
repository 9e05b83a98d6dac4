"""Triton's model repository API over REST (`POST /v2/repository/index`,
`/v2/repository/models/{name}/load` and `/unload`), and the receiver of MLflow's webhooks
(`POST /v2/repository/webhooks/mlflow`). Errors are V2's `{"error": message}`."""

from __future__ import annotations

from typing import Any

import orjson

from arrowsmith.errors import InvalidInputError
from arrowsmith.http.asgi import Request, Response
from arrowsmith.http.v2_rest import json_response
from arrowsmith.serving.repository_api import RepositoryApi
from arrowsmith.serving.webhooks import WebhookRefused


def _body(request: Request) -> dict[str, Any]:
    """The JSON object of a repository request; an empty body is an empty object."""
    if not request.body.strip():
        return {}
    try:
        document = orjson.loads(request.body)
    except orjson.JSONDecodeError as error:
        raise InvalidInputError(f"the request body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidInputError("the request body must be a JSON object")
    return document


def _parameters(document: dict[str, Any]) -> dict[str, Any]:
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInputError("`parameters` must be a JSON object")
    return parameters


class RepositoryRest:
    """Each handler blocks (a load takes seconds): the routes run them on the thread pool."""

    def __init__(self, api: RepositoryApi) -> None:
        self._api = api

    def index(self, request: Request) -> Response:
        ready = _body(request).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInputError("`ready` must be true or false")
        entries = self._api.index(ready)
        return json_response(
            [
                {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
                for e in entries
            ]
        )

    def load(self, request: Request, name: str) -> Response:
        self._api.load(name, _parameters(_body(request)))
        return json_response({})

    def unload(self, request: Request, name: str) -> Response:
        _parameters(_body(request))
        self._api.unload(name)
        return json_response({})

    def mlflow_webhook(self, request: Request) -> Response:
        try:
            outcome = self._api.webhook(request.body, request.headers)
        except WebhookRefused as refused:
            return json_response({"error": refused.message}, refused.status)
        return json_response({"outcome": outcome})
