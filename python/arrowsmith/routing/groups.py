"""How a server whose models need different environments is split into processes. The
group of the first model is the front group: `--workers` processes under its interpreter
own the ports and forward the calls for every other model. Each other group is a model
group: one process under its environment's interpreter, serving only its models on private
Unix sockets in the supervisor's runtime folder, plain (only the front group's processes
can reach the folder) and without a TCP port."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from arrowsmith.config import ModelConfig, RoutedGroup, ServerConfig


@dataclass(frozen=True)
class ProcessGroup:
    """Models that run under one interpreter: an environment's, or the server's own."""

    python: str
    models: tuple[ModelConfig, ...]


@dataclass(frozen=True)
class GroupConfig:
    """What each process of a group serves, and under which interpreter."""

    python: str
    config: ServerConfig


def group_configs(
    config: ServerConfig, groups: list[ProcessGroup], runtime_dir: str
) -> list[GroupConfig]:
    """The front group's configuration (its models, routes to the others), then each model
    group's; their sockets are made in `runtime_dir`. Raises ValueError when a socket
    path would be too long."""
    front, *others = groups
    routes: list[RoutedGroup] = []
    model_groups: list[GroupConfig] = []
    for number, group in enumerate(others, start=1):
        grpc_uds = os.path.join(runtime_dir, f"{number}.grpc")
        http_uds = os.path.join(runtime_dir, f"{number}.http") if config.serves_http else None
        names = tuple(dict.fromkeys(model.served_name for model in group.models))
        routes.append(RoutedGroup(names, grpc_uds, http_uds))
        own = dataclasses.replace(
            config,
            models=group.models,
            grpc_uds=grpc_uds,
            http_uds=http_uds,
            uds_only=True,
            metrics_port=0,
            flight_port=0,
            allow_shared_memory=False,
            workers=1,
            tls_cert=None,
            tls_key=None,
            tls_client_ca=None,
        )
        model_groups.append(GroupConfig(group.python, own))
    front_config = dataclasses.replace(config, models=front.models, routes=tuple(routes))
    return [GroupConfig(front.python, front_config), *model_groups]
