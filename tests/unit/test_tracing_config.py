"""How the `--otel-*` flags and the standard OTEL_* variables become the tracing settings,
and the `--access-log` choice, as `arrowsmith serve` parses them."""

import pytest
from arrowsmith.cli import parse_config
from arrowsmith.tracing import TracingConfig, TracingFlags, resolve

NO_FLAGS = TracingFlags()


def test_tracing_is_off_without_an_endpoint() -> None:
    assert resolve(NO_FLAGS, {}) is None
    assert resolve(NO_FLAGS, {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}) is None


def test_the_general_endpoint_gets_the_traces_path_for_http() -> None:
    config = resolve(NO_FLAGS, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert config == TracingConfig(endpoint="http://collector:4318/v1/traces")


def test_grpc_takes_the_general_endpoint_as_it_is() -> None:
    config = resolve(
        NO_FLAGS,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        },
    )
    assert config is not None
    assert (config.endpoint, config.protocol) == ("http://collector:4317", "grpc")


def test_signal_specific_variables_win_and_are_used_as_given() -> None:
    config = resolve(
        NO_FLAGS,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/custom",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        },
    )
    assert config is not None
    assert (config.endpoint, config.protocol) == ("http://traces:9999/custom", "http/protobuf")


def test_flags_override_the_variables() -> None:
    flags = TracingFlags(
        endpoint="http://flag:4317",
        protocol="grpc",
        service_name="scorer",
        sampler="parentbased_traceidratio",
        sampler_arg="0.1",
    )
    config = resolve(
        flags,
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env:4318/v1/traces",
            "OTEL_SERVICE_NAME": "env-name",
            "OTEL_TRACES_SAMPLER": "always_off",
            "OTEL_TRACES_SAMPLER_ARG": "0.9",
        },
    )
    assert config == TracingConfig(
        endpoint="http://flag:4317",
        protocol="grpc",
        service_name="scorer",
        sampler="parentbased_traceidratio",
        ratio=0.1,
    )


def test_the_service_name_may_come_from_the_resource_attributes() -> None:
    config = resolve(
        NO_FLAGS,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_RESOURCE_ATTRIBUTES": "team=ml,service.name=fraud%20scorer",
        },
    )
    assert config is not None
    assert config.service_name == "fraud scorer"


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
    ],
)
def test_the_standard_switches_turn_tracing_off(environ: dict[str, str]) -> None:
    assert resolve(NO_FLAGS, environ) is None


@pytest.mark.parametrize(
    ("flags", "environ", "says"),
    [
        (TracingFlags(endpoint="http://c:1", protocol="http/json"), {}, "http/json"),
        (TracingFlags(endpoint="http://c:1", sampler="sometimes"), {}, "sometimes"),
        (TracingFlags(endpoint="http://c:1", sampler_arg="half"), {}, "half"),
        (TracingFlags(endpoint="http://c:1", sampler_arg="1.5"), {}, "between 0 and 1"),
        (TracingFlags(endpoint="collector:4317"), {}, "http:// URL"),
        (TracingFlags(endpoint="https://c:4318/v1/traces"), {}, "plain text"),
    ],
)
def test_wrong_settings_are_refused_by_name(
    flags: TracingFlags, environ: dict[str, str], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        resolve(flags, environ)


def test_serve_reads_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    config = parse_config(
        [
            "serve",
            "m",
            "--access-log",
            "json",
            "--otel-endpoint",
            "http://127.0.0.1:4317",
            "--otel-protocol",
            "grpc",
            "--otel-sampler",
            "traceidratio",
            "--otel-sampler-arg",
            "0.25",
        ]
    )
    assert config.access_log == "json"
    assert config.tracing == TracingConfig(
        endpoint="http://127.0.0.1:4317", protocol="grpc", sampler="traceidratio", ratio=0.25
    )
    plain = parse_config(["serve", "m"])
    assert (plain.access_log, plain.tracing) == ("off", None)


def test_an_unknown_access_log_format_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(["serve", "m", "--access-log", "xml"])
    assert "--access-log" in capsys.readouterr().err


def test_a_worker_gets_the_same_settings() -> None:
    import dataclasses
    import json

    from arrowsmith.workers import config_from_json

    config = parse_config(
        ["serve", "m", "--access-log", "text", "--otel-endpoint", "http://127.0.0.1:4318/v1/traces"]
    )
    again = config_from_json(json.dumps(dataclasses.asdict(config)))
    assert again.tracing == config.tracing
    assert again.access_log == "text"
