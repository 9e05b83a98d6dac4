"""The HTTP front: V2 REST, MLflow's scoring protocol (/invocations) and /metrics, served by
uvicorn in the gRPC server's process, over the same data plane."""
