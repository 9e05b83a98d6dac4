"""The gRPC front: the V2 inference service, grpc.health.v1 and server reflection."""
