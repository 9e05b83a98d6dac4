"""Large frames over Arrow Flight: one DoExchange per call, the frame's record batches out
and the predictions' batches back, on the server's `--flight-port`; pyarrow.flight's
errors become InferenceErrors with the gRPC status the server answered.
"""

from __future__ import annotations

import re
import threading

import grpc
import pyarrow as pa
import pyarrow.flight as flight

from arrowsmith.client.calls import InferenceError, Tls

#: Rows per record batch sent.
BATCH_ROWS = 65_536

#: pyarrow.flight's exception for each status, most specific first (ArrowInvalid,
#: ArrowKeyError and ArrowNotImplementedError are also ValueError, KeyError and
#: NotImplementedError).
_STATUSES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (flight.FlightTimedOutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (flight.FlightCancelledError, grpc.StatusCode.CANCELLED),
    (flight.FlightUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (flight.FlightUnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (flight.FlightUnauthorizedError, grpc.StatusCode.PERMISSION_DENIED),
    (flight.FlightInternalError, grpc.StatusCode.INTERNAL),
    (pa.ArrowInvalid, grpc.StatusCode.INVALID_ARGUMENT),
    (pa.ArrowKeyError, grpc.StatusCode.NOT_FOUND),
    (pa.ArrowNotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
]

#: pyarrow.flight's wording around the server's message.
_WRAPPED = re.compile(r"with message: (?P<message>.*?)(?:\. gRPC client debug context:.*)?$", re.S)


def flight_error(error: Exception) -> InferenceError:
    """The InferenceError of a failed Flight call: the server's status and message."""
    code = next(
        (code for kind, code in _STATUSES if isinstance(error, kind)), grpc.StatusCode.UNKNOWN
    )
    text = str(error.args[0]) if error.args else str(error)
    wrapped = _WRAPPED.search(text)
    return InferenceError(code, wrapped.group("message") if wrapped else text)


class FlightEndpoint:
    """A server's Flight service, connected at the first exchange."""

    def __init__(self, location: str, tls: Tls | None) -> None:
        self._location = location
        self._tls = tls
        self._client: flight.FlightClient | None = None
        self._lock = threading.Lock()

    def _connected(self) -> flight.FlightClient:
        with self._lock:
            if self._client is None:
                options = {}
                if self._tls is not None:
                    options = {
                        "tls_root_certs": self._tls.ca,
                        "cert_chain": self._tls.client_cert,
                        "private_key": self._tls.client_key,
                        "override_hostname": self._tls.server_name,
                    }
                self._client = flight.connect(self._location, **options)
            return self._client

    def exchange(self, table: pa.Table, path: list[str], timeout: float | None) -> pa.Table:
        """Sends `table` in batches of BATCH_ROWS rows to the model at `path`; its answer.
        Raises InferenceError."""
        options = flight.FlightCallOptions(timeout=timeout)
        try:
            client = self._connected()
            writer, reader = client.do_exchange(flight.FlightDescriptor.for_path(*path), options)
            with writer:
                writer.begin(table.schema)
                for batch in table.to_batches(max_chunksize=BATCH_ROWS):
                    writer.write_batch(batch)
                writer.done_writing()
                answer: pa.Table = reader.read_all()
                return answer
        except (flight.FlightError, pa.ArrowException) as error:
            raise flight_error(error) from None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
