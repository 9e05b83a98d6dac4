"""`Client` (blocking, grpcio) and `AsyncClient` (asyncio, grpc.aio): `predict` turns a frame
into a ModelInfer request natively, sends it with the call's deadline, retries while the
server is UNAVAILABLE, and decodes the answer natively into a pyarrow Table (or a pandas
DataFrame). Frames of at least `flight_threshold` rows go through Arrow Flight instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Literal

import grpc
import grpc.aio
import numpy as np
import pandas as pd
import pyarrow as pa

from arrowsmith import _native
from arrowsmith.client import frames
from arrowsmith.client.calls import (
    MODEL_INFER,
    MODEL_METADATA,
    Attempts,
    InferenceError,
    Metadata,
    PathLike,
    Settings,
    make_settings,
    metadata_of,
    status_error,
)
from arrowsmith.client.flight import FlightEndpoint

As = Literal["pyarrow", "pandas"]


class _Common:
    """What both clients share: their settings, the metadata they have read, and the
    conversions between frames, messages and tables."""

    def __init__(
        self,
        target: str,
        *,
        tls_ca: PathLike | None = None,
        tls_client_cert: PathLike | None = None,
        tls_client_key: PathLike | None = None,
        tls_server_name: str | None = None,
        timeout: float | None = None,
        retries: int = 3,
        backoff: float = 0.05,
        flight_threshold: int | None = None,
        flight_target: str | None = None,
        channel_options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self._settings: Settings = make_settings(
            target,
            tls_ca=tls_ca,
            tls_client_cert=tls_client_cert,
            tls_client_key=tls_client_key,
            tls_server_name=tls_server_name,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            flight_threshold=flight_threshold,
            flight_target=flight_target,
            channel_options=channel_options,
        )
        self._flight = None
        if self._settings.flight_threshold is not None and self._settings.flight_target:
            endpoint = FlightEndpoint(self._settings.flight_target, self._settings.tls)
            self._flight = (endpoint, self._settings.flight_threshold)
        self._metadata: dict[tuple[str, str], Metadata] = {}
        self._connect(self._settings)

    def _connect(self, settings: Settings) -> None:
        """Opens the channel and its methods."""
        raise NotImplementedError

    def _exchange(
        self, frame: frames.Frame, model: str, version: str
    ) -> Callable[[Attempts], pa.Table] | None:
        """The Flight exchange of `frame`, when it goes that way: tabular, with at least the
        threshold's rows; None otherwise."""
        if self._flight is None or not isinstance(frame, frames.Tabular):
            return None
        endpoint, threshold = self._flight
        if frames.row_count(frame) < threshold:
            return None
        table = frames.flight_table(frame)
        path = [model, version] if version else [model]
        return lambda attempts: endpoint.exchange(table, path, attempts.remaining())

    def _close_flight(self) -> None:
        if self._flight is not None:
            self._flight[0].close()


def _request(model: str, version: str, frame: frames.Named, outputs: Sequence[str] | None) -> bytes:
    inputs = frames.tensor_inputs(frame)
    return _native.encode_request(model, version, "", None, inputs, list(outputs or ()))


def _outputs(response: bytes) -> list[frames.Output]:
    _, _, _, _, outputs = _native.decode_response(response)
    return outputs


def _has_bytes(outputs: list[frames.Output]) -> bool:
    return any(datatype == "BYTES" for _, datatype, _, _ in outputs)


def _result(table: pa.Table, as_: As) -> pa.Table | pd.DataFrame:
    return table.to_pandas() if as_ == "pandas" else table


def _check_as(as_: str) -> None:
    if as_ not in ("pyarrow", "pandas"):
        raise ValueError(f"as_ is 'pyarrow' or 'pandas', not {as_!r}")


class Client(_Common):
    """A blocking client of a V2 inference server (see the package's documentation).

    `target` is "host:port" or "unix:/path". Thread-safe; `close()` it, or use it in a
    `with` block.
    """

    def _connect(self, settings: Settings) -> None:
        if settings.tls is None:
            self._channel = grpc.insecure_channel(settings.target, settings.channel_options)
        else:
            self._channel = grpc.secure_channel(
                settings.target, settings.tls.credentials(), settings.channel_options
            )
        self._infer = self._channel.unary_unary(MODEL_INFER)
        self._ask_metadata = self._channel.unary_unary(MODEL_METADATA)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()
        self._close_flight()

    def _call(self, method: Any, request: Any, attempts: Attempts) -> Any:
        while True:
            try:
                return method(request, timeout=attempts.remaining())
            except grpc.RpcError as error:
                time.sleep(attempts.pause_after(status_error(error)))

    def _model_metadata(self, model: str, version: str, attempts: Attempts) -> Metadata:
        key = (model, version)
        if key not in self._metadata:
            request = _native.encode_metadata_request(model, version)
            response = self._call(self._ask_metadata, request, attempts)
            self._metadata[key] = metadata_of(response)
        return self._metadata[key]

    def predict(
        self,
        model: str,
        frame: frames.Frame,
        *,
        version: str = "",
        timeout: float | None = None,
        outputs: Sequence[str] | None = None,
        as_: As = "pyarrow",
    ) -> pa.Table | pd.DataFrame:
        """The model's predictions for `frame`, one column per output. `timeout` (seconds,
        else the client's) is the deadline of the whole call, retries included; `outputs`
        names the outputs wanted (all by default). Raises InferenceError."""
        _check_as(as_)
        attempts = Attempts(self._settings, timeout)
        exchange = self._exchange(frame, model, version)
        if exchange is not None:
            while True:
                try:
                    return _result(exchange(attempts), as_)
                except InferenceError as failure:
                    time.sleep(attempts.pause_after(failure))
        if isinstance(frame, np.ndarray):
            frame = {self._model_metadata(model, version, attempts).input_name(model): frame}
        request = _request(model, version, frame, outputs)
        decoded = _outputs(self._call(self._infer, request, attempts))
        text: frozenset[str] = frozenset()
        if _has_bytes(decoded):
            text = self._model_metadata(model, version, attempts).text_outputs
        return _result(frames.outputs_table(decoded, text), as_)


class AsyncClient(_Common):
    """The asyncio twin of `Client` over grpc.aio: the same options, `await predict(...)`.

    Make it inside the event loop that uses it; `await close()` it, or use it in an
    `async with` block.
    """

    def _connect(self, settings: Settings) -> None:
        if settings.tls is None:
            self._channel = grpc.aio.insecure_channel(settings.target, settings.channel_options)
        else:
            self._channel = grpc.aio.secure_channel(
                settings.target, settings.tls.credentials(), settings.channel_options
            )
        self._infer = self._channel.unary_unary(MODEL_INFER)
        self._ask_metadata = self._channel.unary_unary(MODEL_METADATA)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()
        self._close_flight()

    async def _call(self, method: Any, request: Any, attempts: Attempts) -> Any:
        while True:
            try:
                return await method(request, timeout=attempts.remaining())
            except grpc.RpcError as error:
                await asyncio.sleep(attempts.pause_after(status_error(error)))

    async def _model_metadata(self, model: str, version: str, attempts: Attempts) -> Metadata:
        key = (model, version)
        if key not in self._metadata:
            request = _native.encode_metadata_request(model, version)
            response = await self._call(self._ask_metadata, request, attempts)
            self._metadata[key] = metadata_of(response)
        return self._metadata[key]

    async def predict(
        self,
        model: str,
        frame: frames.Frame,
        *,
        version: str = "",
        timeout: float | None = None,
        outputs: Sequence[str] | None = None,
        as_: As = "pyarrow",
    ) -> pa.Table | pd.DataFrame:
        """As `Client.predict`; a Flight exchange runs in a worker thread."""
        _check_as(as_)
        attempts = Attempts(self._settings, timeout)
        exchange = self._exchange(frame, model, version)
        if exchange is not None:
            while True:
                try:
                    return _result(await asyncio.to_thread(exchange, attempts), as_)
                except InferenceError as failure:
                    await asyncio.sleep(attempts.pause_after(failure))
        if isinstance(frame, np.ndarray):
            metadata = await self._model_metadata(model, version, attempts)
            frame = {metadata.input_name(model): frame}
        request = _request(model, version, frame, outputs)
        decoded = _outputs(await self._call(self._infer, request, attempts))
        text: frozenset[str] = frozenset()
        if _has_bytes(decoded):
            text = (await self._model_metadata(model, version, attempts)).text_outputs
        return _result(frames.outputs_table(decoded, text), as_)
