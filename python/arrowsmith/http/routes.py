"""Which endpoint answers a method and path. A hand-written match on the path's segments:
the route set is small and fixed, and a framework router would cost more per request than
the whole match."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from http import HTTPStatus

import orjson

from arrowsmith.http import invocations, shared_memory_rest, v2_rest
from arrowsmith.http.asgi import Endpoint, Request, Response
from arrowsmith.http.forward import Forwarder
from arrowsmith.http.invocations import MlflowScoring
from arrowsmith.http.repository_rest import RepositoryRest
from arrowsmith.http.v2_rest import V2Rest

Handler = Callable[[Request], Response | Awaitable[Response]]
#: The method a route takes, its handler, and whether the handler blocks.
Route = tuple[str, Handler, bool]


def _routing_failure(status: HTTPStatus, v2: bool) -> Endpoint:
    """No such route (404) or not with this method (405): V2 paths say so in V2's words,
    others as MLflow's FastAPI server does."""
    key = "error" if v2 else "detail"
    response = Response(status.value, orjson.dumps({key: status.phrase}))
    return Endpoint(lambda request: response, False, v2_rest.error_response)


class Routes:
    def __init__(
        self,
        v2: V2Rest,
        scoring: MlflowScoring,
        metrics_page: Handler,
        repository: RepositoryRest | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.v2 = v2
        self.scoring = scoring
        self.metrics_page = metrics_page
        self.repository = repository
        #: Answers the requests for models other processes of the server serve.
        self.forwarder = forwarder

    def __call__(self, method: str, path: str) -> Endpoint:
        parts = path.strip("/").split("/")
        if parts[0] == "v2":
            return self._v2(method, parts[1:])
        scoring = self.scoring
        route: Route | None = None
        if parts == ["invocations"]:
            route = ("POST", partial(scoring.invocations, name=None), False)
        elif len(parts) == 3 and parts[0] == "models" and parts[2] == "invocations":
            route = ("POST", partial(scoring.invocations, name=parts[1]), False)
            route = self._forwarded(route, parts[1], invocations.PROTOCOL)
        elif parts in (["ping"], ["health"]):
            route = ("GET", scoring.ping, False)
        elif parts == ["version"]:
            route = ("GET", scoring.version, False)
        elif parts == ["metrics"]:
            route = ("GET", self.metrics_page, True)
        return self._endpoint(method, route, v2=False)

    def _v2(self, method: str, parts: list[str]) -> Endpoint:
        v2 = self.v2
        route: Route | None = None
        if parts == []:
            route = ("GET", v2.server_metadata, False)
        elif parts == ["health", "live"]:
            route = ("GET", v2.live, False)
        elif parts == ["health", "ready"]:
            route = ("GET", v2.ready, False)
        elif len(parts) >= 2 and parts[0] == "models":
            name, rest, version = parts[1], parts[2:], ""
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            if rest == []:
                route = ("GET", partial(v2.model_metadata, name=name, version=version), False)
            elif rest == ["config"]:
                route = ("GET", partial(v2.model_config, name=name, version=version), False)
            elif rest == ["ready"]:
                route = ("GET", partial(v2.model_ready, name=name, version=version), False)
            elif rest == ["infer"]:
                route = ("POST", partial(v2.infer, name=name, version=version), False)
            if route is not None:
                route = self._forwarded(route, name, v2_rest.PROTOCOL)
        elif parts[:1] == ["repository"] and self.repository is not None:
            route = self._repository(parts[1:], self.repository)
        elif parts[:1] == ["systemsharedmemory"]:
            route = self._shared_memory(parts[1:])
        return self._endpoint(method, route, v2=True)

    @staticmethod
    def _shared_memory(parts: list[str]) -> Route | None:
        if parts == ["status"]:
            return ("GET", shared_memory_rest.status, False)
        if parts == ["unregister"]:
            return ("POST", shared_memory_rest.unregister, False)
        if len(parts) == 3 and parts[0] == "region":
            name, action = parts[1], parts[2]
            if action == "status":
                return ("GET", partial(shared_memory_rest.status, name=name), False)
            if action == "register":
                return ("POST", partial(shared_memory_rest.register, name=name), True)
            if action == "unregister":
                return ("POST", partial(shared_memory_rest.unregister, name=name), False)
        return None

    def _forwarded(self, route: Route, model: str, protocol: str) -> Route:
        """`route`, answered by the process serving `model` when that is another one."""
        handler = None if self.forwarder is None else self.forwarder.handler(model, protocol)
        return route if handler is None else (route[0], handler, False)

    @staticmethod
    def _repository(parts: list[str], repository: RepositoryRest) -> Route | None:
        if parts == ["index"]:
            return ("POST", repository.index, True)
        if parts == ["webhooks", "mlflow"]:
            return ("POST", repository.mlflow_webhook, True)
        if len(parts) == 3 and parts[0] == "models" and parts[2] in ("load", "unload"):
            action = repository.load if parts[2] == "load" else repository.unload
            return ("POST", partial(action, name=parts[1]), True)
        return None

    def _endpoint(self, method: str, route: Route | None, v2: bool) -> Endpoint:
        if route is None:
            return _routing_failure(HTTPStatus.NOT_FOUND, v2)
        allowed, handler, blocking = route
        if method != allowed:
            return _routing_failure(HTTPStatus.METHOD_NOT_ALLOWED, v2)
        errors = v2_rest.error_response if v2 else invocations.error_response
        return Endpoint(handler, blocking, errors)
