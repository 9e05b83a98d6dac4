"""A Python client of V2 (Open Inference Protocol) inference services, Arrowsmith's first.

    from arrowsmith.client import Client

    with Client("127.0.0.1:8081") as client:
        predictions = client.predict("wine", frame)  # a pyarrow Table

`frame` is a pandas DataFrame, a pyarrow Table or RecordBatch (one tensor per column), a
dict of numpy arrays (named tensors) or one numpy array (the model's first input). Requests
are encoded and responses decoded natively (`arrowsmith._native`), raw contents copied at
most once; outputs come back as columns. `AsyncClient` does the same over grpc.aio. A
failed call raises `InferenceError` with the server's gRPC status code and message.
"""

from arrowsmith.client.calls import InferenceError
from arrowsmith.client.clients import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "InferenceError"]
