"""Models of several environments in one server: how they are grouped by environment (the
first model's group first, env_manager local as the server's own), how the supervisor
splits the server into a front group and model groups, and how a process of the front
group keeps the routed models' readiness."""

import dataclasses
import json
import pathlib

import pytest
from arrowsmith.config import ModelConfig, RoutedGroup, ServerConfig
from arrowsmith.environments.cache import Environment
from arrowsmith.environments.serving import LOCAL, group_by_environment
from arrowsmith.routing.groups import ProcessGroup, group_configs
from arrowsmith.routing.remote import RoutedModels
from arrowsmith.workers import config_from_json

#: Model URI -> the environment key a fake build gives it.
KEYS = {"/m/forest": "env-a", "/m/boost": "env-b", "/m/forest-2": "env-a"}


def model(uri: str, manager: str = "uv", **settings: object) -> ModelConfig:
    return ModelConfig(uri=uri, env_manager=manager, **settings)  # type: ignore[arg-type]


class FakeBuilds:
    """Environments by URI, without building anything; remembers what it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, config: ModelConfig) -> Environment:
        self.asked.append(config.uri)
        key = KEYS[config.uri]
        return Environment(key, pathlib.Path("/cache") / key)


def plan(*models: ModelConfig) -> list[tuple[str, list[str]]]:
    """(group key, its model URIs) per group, in order."""
    groups = group_by_environment(models, FakeBuilds())
    return [(group.key, [m.uri for m in group.models]) for group in groups]


def test_models_are_grouped_by_environment_in_the_order_of_each_groups_first_model() -> None:
    assert plan(
        model("/m/wine", "local"),
        model("/m/forest"),
        model("/m/boost", "virtualenv"),
        model("/m/red", "local"),
        model("/m/forest-2"),
    ) == [
        (LOCAL, ["/m/wine", "/m/red"]),
        ("env-a", ["/m/forest", "/m/forest-2"]),
        ("env-b", ["/m/boost"]),
    ]


def test_the_first_models_group_comes_first_even_when_it_is_not_local() -> None:
    assert plan(model("/m/boost"), model("/m/wine", "local"), model("/m/forest")) == [
        ("env-b", ["/m/boost"]),
        (LOCAL, ["/m/wine"]),
        ("env-a", ["/m/forest"]),
    ]


def test_models_of_one_environment_are_one_group() -> None:
    assert plan(model("/m/forest"), model("/m/forest-2")) == [
        ("env-a", ["/m/forest", "/m/forest-2"])
    ]


def test_local_models_are_not_built() -> None:
    builds = FakeBuilds()
    groups = group_by_environment((model("/m/wine", "local"), model("/m/boost")), builds)
    assert builds.asked == ["/m/boost"]
    assert groups[0].environment is None
    assert groups[1].environment == Environment("env-b", pathlib.Path("/cache/env-b"))


def test_versions_of_one_model_must_share_an_environment() -> None:
    with pytest.raises(ValueError, match=r"versions of model 'wine' need different environments"):
        plan(
            model("/m/wine", "local", name="wine", version="1"),
            model("/m/forest", name="wine", version="2"),
        )


def server(*models: ModelConfig, **settings: object) -> ServerConfig:
    return ServerConfig(models=models, metrics_port=0, **settings)  # type: ignore[arg-type]


def test_the_front_group_owns_the_ports_and_routes_to_each_model_group(
    tmp_path: pathlib.Path,
) -> None:
    wine, forest, forest_2, boost = (
        model("/m/wine", "local"),
        model("/m/forest", name="forest"),
        model("/m/forest-2", name="forest-2"),
        model("/m/boost", name="boost"),
    )
    config = server(wine, forest, forest_2, boost, grpc_port=9001, http_port=9002, workers=3)
    groups = [
        ProcessGroup("/usr/bin/python3", (wine,)),
        ProcessGroup("/cache/env-a/bin/python", (forest, forest_2)),
        ProcessGroup("/cache/env-b/bin/python", (boost,)),
    ]
    front, first, second = group_configs(config, groups, str(tmp_path))

    assert front.python == "/usr/bin/python3"
    assert front.config.models == (wine,)
    assert (front.config.grpc_port, front.config.http_port, front.config.workers) == (9001, 9002, 3)
    assert front.config.routes == (
        RoutedGroup(("forest", "forest-2"), str(tmp_path / "1.grpc"), str(tmp_path / "1.http")),
        RoutedGroup(("boost",), str(tmp_path / "2.grpc"), str(tmp_path / "2.http")),
    )
    for group, route in zip((first, second), front.config.routes, strict=True):
        served = group.config
        assert served.uds_only and served.workers == 1 and served.metrics_port == 0
        assert (served.grpc_uds, served.http_uds) == (route.grpc_uds, route.http_uds)
        assert served.routes == ()
    assert first.python == "/cache/env-a/bin/python"
    assert first.config.models == (forest, forest_2)
    assert second.config.models == (boost,)


def test_model_groups_serve_no_http_when_the_server_serves_none(tmp_path: pathlib.Path) -> None:
    wine, forest = model("/m/wine", "local"), model("/m/forest")
    config = server(wine, forest, http_port=0)
    groups = [ProcessGroup("/py", (wine,)), ProcessGroup("/env/py", (forest,))]
    front, forest_group = group_configs(config, groups, str(tmp_path))
    assert front.config.routes[0].http_uds is None
    assert forest_group.config.http_uds is None
    assert not forest_group.config.serves_http


def test_model_groups_serve_their_private_sockets_without_tls(tmp_path: pathlib.Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("-")
    wine, forest = model("/m/wine", "local"), model("/m/forest")
    config = server(wine, forest, tls_cert=str(cert), tls_key=str(cert))
    groups = [ProcessGroup("/py", (wine,)), ProcessGroup("/env/py", (forest,))]
    front, forest_group = group_configs(config, groups, str(tmp_path))
    assert front.config.tls_cert == str(cert)
    assert forest_group.config.tls_cert is None and forest_group.config.tls_key is None


def test_a_runtime_folder_too_deep_for_a_socket_path_is_refused(tmp_path: pathlib.Path) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    wine, forest = model("/m/wine", "local"), model("/m/forest")
    groups = [ProcessGroup("/py", (wine,)), ProcessGroup("/env/py", (forest,))]
    with pytest.raises(ValueError, match="longer than a Unix socket path may be"):
        group_configs(server(wine, forest), groups, str(deep))


def test_a_workers_configuration_survives_json_with_its_routes(tmp_path: pathlib.Path) -> None:
    wine, forest = model("/m/wine", "local"), model("/m/forest", versions=())
    groups = [ProcessGroup("/py", (wine,)), ProcessGroup("/env/py", (forest,))]
    for group in group_configs(server(wine, forest, workers=2), groups, str(tmp_path)):
        text = json.dumps(dataclasses.asdict(group.config))
        assert config_from_json(text) == dataclasses.replace(group.config, workers=1)


def test_routed_models_are_not_ready_until_their_process_says_so() -> None:
    forests = RoutedGroup(("forest", "forest-2"), "/run/1.grpc", "/run/1.http")
    boost = RoutedGroup(("boost",), "/run/2.grpc", "/run/2.http")
    changes: list[bool] = []
    routed = RoutedModels((forests, boost), lambda: changes.append(routed.ready))

    assert routed.group_of("forest-2") == forests
    assert routed.group_of("wine") is None
    assert not routed.ready
    routed.set_ready(forests, True)
    assert routed.readiness() == [("forest", True), ("forest-2", True), ("boost", False)]
    routed.set_ready(forests, True)  # no change: nobody is told
    routed.set_ready(boost, True)
    assert routed.ready
    routed.set_ready(forests, False)
    assert changes == [False, True, False]
    assert RoutedModels(()).ready
