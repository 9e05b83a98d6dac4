"""The gRPC server: grpcio's synchronous server (its per-call cost measured about half of
grpc.aio's on our reference machine), with the inference service, health and reflection."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from arrowsmith.config import ServerConfig
from arrowsmith.dataplane import DataPlane
from arrowsmith.grpc.servicer import SERVICE_NAME, InferenceServicer


class GrpcFront:
    """A started gRPC server whose health follows the server's readiness."""

    def __init__(self, config: ServerConfig, dataplane: DataPlane, reuse_port: bool) -> None:
        size = config.max_message_size
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=config.grpc_threads, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
                # Workers share the port on purpose; a lone server must not share it by
                # accident with a process already there.
                ("grpc.so_reuseport", int(reuse_port)),
            ],
        )
        servicer = InferenceServicer(dataplane)
        self.server.add_registered_method_handlers(SERVICE_NAME, servicer.method_handlers())
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.set_serving(False)
        self.port = self.server.add_insecure_port(f"{config.host}:{config.grpc_port}")

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def start(self) -> None:
        self.server.start()

    def stop(self, grace_seconds: float) -> None:
        self.set_serving(False)
        self.server.stop(grace_seconds).wait()
