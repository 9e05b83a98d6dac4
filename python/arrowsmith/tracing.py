"""OpenTelemetry tracing settings: the standard `OTEL_*` environment variables, or the
`--otel-*` flags that override them, resolved once into what the native exporter needs.

Tracing is on only when an OTLP endpoint is given (and neither `OTEL_SDK_DISABLED=true` nor
`OTEL_TRACES_EXPORTER=none` turns it off); the spans themselves are made and exported by the
native module, so a server without an endpoint pays nothing for them."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

PROTOCOLS = ("grpc", "http/protobuf")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_SERVICE_NAME = "arrowsmith"
_HTTP_TRACES_PATH = "/v1/traces"


@dataclass(frozen=True)
class TracingConfig:
    """Where and how spans go. `endpoint` is the full URL spans are sent to: for
    http/protobuf the `/v1/traces` URL, for grpc the collector's address. The exporter
    reads OTLP's headers, timeout and compression from the `OTEL_EXPORTER_OTLP_*`
    variables itself."""

    endpoint: str
    protocol: str = "http/protobuf"
    service_name: str = DEFAULT_SERVICE_NAME
    sampler: str = "parentbased_always_on"
    ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"OTLP protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        if self.sampler not in SAMPLERS:
            raise ValueError(f"trace sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"trace sampler argument {self.ratio} must be between 0 and 1")
        parsed = urllib.parse.urlsplit(self.endpoint)
        if parsed.scheme == "https":
            raise ValueError(
                f"OTLP endpoint {self.endpoint!r}: spans are sent in plain text only; use an "
                "http:// endpoint (a collector beside the server, which may forward over TLS)"
            )
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"OTLP endpoint {self.endpoint!r} must be an http:// URL with a host")


@dataclass(frozen=True)
class TracingFlags:
    """The `--otel-*` flags as given (None: not given, the environment decides)."""

    endpoint: str | None = None
    protocol: str | None = None
    service_name: str | None = None
    sampler: str | None = None
    sampler_arg: str | None = None


def resolve(flags: TracingFlags, environ: Mapping[str, str]) -> TracingConfig | None:
    """The tracing configuration the flags and the `OTEL_*` variables ask for, or None when
    tracing is off. Raises ValueError naming the setting that is wrong."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if flags.endpoint is None and environ.get("OTEL_TRACES_EXPORTER", "otlp").strip() == "none":
        return None
    protocol = (
        flags.protocol
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    endpoint = _endpoint(flags.endpoint, protocol, environ)
    if endpoint is None:
        return None
    sampler = flags.sampler or environ.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on"
    return TracingConfig(
        endpoint=endpoint,
        protocol=protocol,
        service_name=flags.service_name
        or environ.get("OTEL_SERVICE_NAME")
        or _service_from_attributes(environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        or DEFAULT_SERVICE_NAME,
        sampler=sampler.strip().lower(),
        ratio=_ratio(flags.sampler_arg or environ.get("OTEL_TRACES_SAMPLER_ARG")),
    )


def _endpoint(flag: str | None, protocol: str, environ: Mapping[str, str]) -> str | None:
    """The URL spans go to. A signal-specific endpoint (`..._TRACES_ENDPOINT`, or the flag) is
    used as given; the general one is a base URL to which http/protobuf adds `/v1/traces`, as
    the OTLP exporter specification says."""
    exact = flag or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if exact:
        return exact.strip()
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not base:
        return None
    if protocol == "http/protobuf":
        return base.rstrip("/") + _HTTP_TRACES_PATH
    return base


def _ratio(text: str | None) -> float:
    if text is None or not text.strip():
        return 1.0
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"trace sampler argument {text!r} is not a number") from None


def _service_from_attributes(text: str) -> str | None:
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key.strip() == "service.name" and value.strip():
            return urllib.parse.unquote(value.strip())
    return None
