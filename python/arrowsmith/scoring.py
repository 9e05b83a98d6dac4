"""`arrowsmith score MODEL_URI_OR_TARGET INPUT OUTPUT`: bulk scoring of a Parquet, CSV or
Arrow file through Arrow Flight's DoExchange, written to Parquet or CSV as it streams.

Given a model URI (or folder), it starts `arrowsmith serve` for it on free loopback ports
and stops it after; given `grpc://host:port` (or `grpc+tls://`), it uses that server's
Flight port and `--model` names the model. The input is read a batch of rows at a time and
the answers are written as they come, so memory stays flat however large the file: one
thread sends batches while the other receives answers, and HTTP/2 flow control holds the
sender back when the server or the writer is slower. The output holds the predictions'
columns, row for row in the input's order (what `mlflow models predict` answers, as a
table)."""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.flight as flight

#: Rows per record batch sent, unless --batch-rows says otherwise: large enough that the
#: per-batch costs vanish, small enough that a batch is a few MB.
DEFAULT_BATCH_ROWS = 65_536
#: Seconds a started server has to load its model and answer.
START_TIMEOUT_SECONDS = 300.0
#: Seconds a started server has to drain and exit once scoring is done.
STOP_TIMEOUT_SECONDS = 30.0
#: How often progress is reported when standard error is not a terminal.
LOG_INTERVAL_SECONDS = 5.0
TARGET_SCHEMES = ("grpc://", "grpc+tcp://", "grpc+tls://")


class BatchWriter(Protocol):
    def write_batch(self, batch: pa.RecordBatch) -> None: ...

    def close(self) -> None: ...


def _format(path: pathlib.Path, given: str | None, choices: tuple[str, ...]) -> str:
    """The file's format: as given, else by its extension."""
    if given is not None:
        return given
    suffix = path.suffix.lower().lstrip(".")
    by_suffix = {"parquet": "parquet", "pq": "parquet", "csv": "csv", "arrow": "arrow"}
    by_suffix |= {"feather": "arrow", "ipc": "arrow"}
    found = by_suffix.get(suffix)
    if found is None or found not in choices:
        raise ValueError(
            f"cannot tell the format of {path} by its extension; give one of {', '.join(choices)}"
        )
    return found


@dataclass(frozen=True)
class Source:
    """An input file read in batches, with its row count when the file says it."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    rows: int | None


def open_source(path: pathlib.Path, fmt: str, batch_rows: int, delimiter: str) -> Source:
    """Reads `path` a batch at a time (Parquet a row group at a time, CSV by block, Arrow
    IPC memory-mapped)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        # Without pre-buffering: it would read column chunks of every row group ahead,
        # holding most of the file in memory.
        parquet = pq.ParquetFile(path, pre_buffer=False)
        return Source(
            parquet.schema_arrow,
            parquet.iter_batches(batch_size=batch_rows),
            parquet.metadata.num_rows,
        )
    if fmt == "csv":
        import pyarrow.csv as pa_csv

        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(block_size=1 << 23),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter),
        )
        return Source(reader.schema, iter(reader), None)
    source = pa.memory_map(str(path))
    try:
        ipc_file = pa.ipc.open_file(source)
        batches = (ipc_file.get_batch(i) for i in range(ipc_file.num_record_batches))
        return Source(ipc_file.schema, batches, None)
    except pa.ArrowInvalid:
        stream = pa.ipc.open_stream(pa.memory_map(str(path)))
        return Source(stream.schema, iter(stream), None)


def open_sink(path: pathlib.Path, fmt: str, schema: pa.Schema, delimiter: str) -> BatchWriter:
    """A writer of `schema`'s batches into `path`, in `fmt`."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        writer: BatchWriter = pq.ParquetWriter(path, schema)
        return writer
    import pyarrow.csv as pa_csv

    options = pa_csv.WriteOptions(delimiter=delimiter)
    csv_writer: BatchWriter = pa_csv.CSVWriter(str(path), schema, write_options=options)
    return csv_writer


class Progress:
    """Rows scored so far, on standard error: one line rewritten on a terminal, a line every
    few seconds otherwise."""

    def __init__(self, total: int | None, stream: Any = sys.stderr, quiet: bool = False) -> None:
        self.total = total
        self.stream = stream
        self.quiet = quiet
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.last = 0.0
        self.rows = 0

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.rows / elapsed
        if self.total:
            share = 100.0 * self.rows / self.total
            done = f"{self.rows:,}/{self.total:,} rows ({share:.0f}%)"
        else:
            done = f"{self.rows:,} rows"
        return f"scored {done} in {elapsed:.1f} s, {rate:,.0f} rows/s"

    def add(self, rows: int) -> None:
        self.rows += rows
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty and now - self.last >= 0.1:
            print(f"\r{self.line()}", end="", file=self.stream, flush=True)
            self.last = now
        elif not self.tty and now - self.last >= LOG_INTERVAL_SECONDS:
            print(self.line(), file=self.stream, flush=True)
            self.last = now

    def finish(self) -> None:
        if not self.quiet:
            print(f"\r{self.line()}" if self.tty else self.line(), file=self.stream, flush=True)


def exchange(
    client: flight.FlightClient,
    path: list[str],
    source: Source,
    sink: Callable[[pa.Schema], BatchWriter],
    progress: Progress,
    timeout: float | None = None,
) -> int:
    """Streams the source's batches to the model at `path` and writes each answer as it
    arrives; the rows written. A refusal or failure raises the Flight error, naming what
    the server said; an input that cannot be read to its end raises its own error. Either
    side failing cancels the call, so that the other is not left waiting."""
    options = flight.FlightCallOptions(timeout=timeout)
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_path(*path), options)
    failure: list[BaseException] = []

    def send() -> None:
        try:
            writer.begin(source.schema)
            for batch in source.batches:
                writer.write_batch(batch)
            writer.done_writing()
        except BaseException as error:  # reported by the receiving side, which it wakes
            failure.append(error)
            reader.cancel()

    sender = threading.Thread(target=send, name="score-send", daemon=True)
    sender.start()
    out: BatchWriter | None = None
    written = 0
    finished = False
    try:
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            except (flight.FlightError, pa.ArrowException):
                # The sender failed first and cancelled the call: its error is the one to
                # tell. Otherwise this is the server's status.
                if failure:
                    raise failure[0] from None
                raise
            batch = chunk.data
            if out is None:
                out = sink(batch.schema)
            out.write_batch(batch)
            written += batch.num_rows
            progress.add(batch.num_rows)
        finished = True
    finally:
        if not finished:
            # A sender blocked by flow control would otherwise wait forever.
            reader.cancel()
        if out is not None:
            out.close()
        sender.join()
        # Closing a cancelled call raises again; the error that cancelled it is the one told.
        with contextlib.nullcontext() if finished else contextlib.suppress(Exception):
            writer.close()
    if failure:
        raise failure[0]
    if out is None:
        schema = reader.schema
        sink(schema).close()
    return written


@dataclass(frozen=True)
class Target:
    """Where the Flight service is, and the model's path on it."""

    location: str
    path: list[str]


def free_port() -> int:
    """A loopback port free now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _is_target(text: str) -> bool:
    return text.startswith(TARGET_SCHEMES)


@contextlib.contextmanager
def _served(model_uri: str, workers: int, log: pathlib.Path | None) -> Iterator[Target]:
    """`arrowsmith serve MODEL_URI` on free loopback ports, until the block ends."""
    flight_port = free_port()
    command = [
        sys.executable,
        "-m",
        "arrowsmith",
        "serve",
        model_uri,
        "--name",
        "model",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(free_port()),
        "--http-port",
        "0",
        "--metrics-port",
        "0",
        "--flight-port",
        str(flight_port),
        "--workers",
        str(workers),
    ]
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(log.open("ab")) if log is not None else subprocess.DEVNULL
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            target = Target(f"grpc://127.0.0.1:{flight_port}", ["model"])
            _wait_ready(target, server)
            yield target
        finally:
            server.terminate()
            try:
                server.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_ready(target: Target, server: subprocess.Popen[bytes]) -> None:
    """Until the served model's schema can be read (its model loaded)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    descriptor = flight.FlightDescriptor.for_path(*target.path)
    with flight.connect(target.location) as client:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server for the model exited (code {server.returncode})")
            try:
                client.get_schema(descriptor, flight.FlightCallOptions(timeout=2.0))
                return
            # Not listening yet (pyarrow raises a plain OSError), or the model still loading.
            except (flight.FlightUnavailableError, flight.FlightTimedOutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the model did not load within {START_TIMEOUT_SECONDS} s")
            time.sleep(0.1)


def _connect(location: str, args: argparse.Namespace) -> flight.FlightClient:
    kwargs: dict[str, Any] = {}
    if args.tls_ca is not None:
        kwargs["tls_root_certs"] = pathlib.Path(args.tls_ca).read_bytes()
    if args.tls_client_cert is not None:
        kwargs["cert_chain"] = pathlib.Path(args.tls_client_cert).read_bytes()
        kwargs["private_key"] = pathlib.Path(args.tls_client_key).read_bytes()
    return flight.connect(location, **kwargs)


def run(args: argparse.Namespace) -> int:
    """The `score` command: 0 once every row is scored and written, 1 when the server
    refused or failed (its message on standard error), 2 for a usage problem."""
    source_path = pathlib.Path(args.input)
    output_path = pathlib.Path(args.output)
    try:
        input_format = _format(source_path, args.input_format, ("parquet", "csv", "arrow"))
        output_format = _format(output_path, args.output_format, ("parquet", "csv"))
        if args.batch_rows <= 0:
            raise ValueError("--batch-rows must be positive")
        if _is_target(args.model) and args.model_name is None:
            raise ValueError("scoring through a running server needs --model-name")
        if (args.tls_client_cert is None) != (args.tls_client_key is None):
            raise ValueError("--tls-client-cert and --tls-client-key go together")
        source = open_source(source_path, input_format, args.batch_rows, args.delimiter)
    except (ValueError, OSError, pa.ArrowException) as error:
        print(f"arrowsmith score: {error}", file=sys.stderr)
        return 2
    progress = Progress(source.rows, quiet=args.quiet)

    def sink(schema: pa.Schema) -> BatchWriter:
        return open_sink(output_path, output_format, schema, args.delimiter)

    with contextlib.ExitStack() as stack:
        try:
            if _is_target(args.model):
                path = [args.model_name] + ([args.model_version] if args.model_version else [])
                target = Target(args.model, path)
            else:
                log = pathlib.Path(args.server_log) if args.server_log else None
                target = stack.enter_context(_served(args.model, args.workers, log))
            client = stack.enter_context(_connect(target.location, args))
            exchange(client, target.path, source, sink, progress, args.timeout)
        except (flight.FlightError, pa.ArrowException, RuntimeError, OSError) as error:
            print(f"\narrowsmith score: {error}", file=sys.stderr)
            return 1
    progress.finish()
    return 0
