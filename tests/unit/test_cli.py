"""`arrowsmith serve`'s flags, their ARROWSMITH_* environment variables and a `--config` file
become one validated ServerConfig; bad values stop the CLI with exit code 2 and a readable
message."""

import os
import pathlib

import pytest
from arrowsmith import __version__, cli
from arrowsmith.config import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    ModelConfig,
    ServerConfig,
)

#: Settings of each model rather than of the server.
MODEL_FIELDS = ("name", "max_batch_size", "max_batch_delay_ms", "max_queue_size")

# flag, its environment variable, a value to set, the config field and its parsed value.
SETTINGS = [
    ("--name", "ARROWSMITH_NAME", "wine", "name", "wine"),
    ("--host", "ARROWSMITH_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("--grpc-port", "ARROWSMITH_GRPC_PORT", "9001", "grpc_port", 9001),
    ("--http-port", "ARROWSMITH_HTTP_PORT", "9002", "http_port", 9002),
    ("--metrics-port", "ARROWSMITH_METRICS_PORT", "0", "metrics_port", 0),
    ("--workers", "ARROWSMITH_WORKERS", "3", "workers", 3),
    ("--max-batch-size", "ARROWSMITH_MAX_BATCH_SIZE", "8", "max_batch_size", 8),
    ("--max-batch-delay-ms", "ARROWSMITH_MAX_BATCH_DELAY_MS", "2.5", "max_batch_delay_ms", 2.5),
    ("--max-queue-size", "ARROWSMITH_MAX_QUEUE_SIZE", "5", "max_queue_size", 5),
    ("--max-message-size", "ARROWSMITH_MAX_MESSAGE_SIZE", "1024", "max_message_size", 1024),
    ("--http-threads", "ARROWSMITH_HTTP_THREADS", "4", "http_threads", 4),
    ("--log-level", "ARROWSMITH_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("--request-timeout", "ARROWSMITH_REQUEST_TIMEOUT", "2.5", "request_timeout", 2.5),
    ("--predict-timeout", "ARROWSMITH_PREDICT_TIMEOUT", "0", "predict_timeout", 0.0),
    ("--drain-timeout", "ARROWSMITH_DRAIN_TIMEOUT", "7", "drain_timeout", 7.0),
]
SETTING_IDS = [s[0] for s in SETTINGS]
#: The variables of the TLS and Unix socket flags, which need files and folders to test.
LISTENER_VARIABLES = [
    "ARROWSMITH_TLS_CERT",
    "ARROWSMITH_TLS_KEY",
    "ARROWSMITH_TLS_CLIENT_CA",
    "ARROWSMITH_GRPC_UDS",
    "ARROWSMITH_HTTP_UDS",
    "ARROWSMITH_UDS_ONLY",
]
SETTING_ARGS = ("flag", "variable", "value", "field", "parsed")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell exports must not leak into the defaults."""
    for variable in [s[1] for s in SETTINGS] + LISTENER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("ARROWSMITH_MODEL_URI", raising=False)
    monkeypatch.delenv("ARROWSMITH_CONFIG", raising=False)


def setting(config: ServerConfig, field: str) -> object:
    return getattr(config.models[0] if field in MODEL_FIELDS else config, field)


def write_config(directory: pathlib.Path, text: str) -> str:
    path = directory / "models.yaml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    """Local-only, one worker per core, batching on without waiting."""
    config = cli.parse_config(["serve", "models:/wine/1"])
    assert config == ServerConfig(
        models=(
            ModelConfig(
                uri="models:/wine/1",
                name=None,
                max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                max_batch_delay_ms=0.0,
                max_queue_size=1024,
            ),
        ),
        host="127.0.0.1",
        grpc_port=8081,
        metrics_port=8082,
        max_message_size=256 * 1024 * 1024,
        http_threads=32,
        tls_cert=None,
        tls_key=None,
        tls_client_ca=None,
        grpc_uds=None,
        http_uds=None,
        uds_only=False,
        workers=len(os.sched_getaffinity(0)),
        log_level="INFO",
    )
    assert DEFAULT_MAX_MESSAGE_SIZE == 256 * 1024 * 1024


@pytest.mark.parametrize(SETTING_ARGS, SETTINGS, ids=SETTING_IDS)
def test_flag(flag: str, variable: str, value: str, field: str, parsed: object) -> None:
    config = cli.parse_config(["serve", "model", flag, value])
    assert setting(config, field) == parsed


@pytest.mark.parametrize(SETTING_ARGS, SETTINGS, ids=SETTING_IDS)
def test_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
    flag: str,
    variable: str,
    value: str,
    field: str,
    parsed: object,
) -> None:
    """Each flag's default is read from its variable when the parser is built."""
    monkeypatch.setenv(variable, value)
    config = cli.parse_config(["serve", "model"])
    assert setting(config, field) == parsed


@pytest.mark.parametrize(SETTING_ARGS, SETTINGS, ids=SETTING_IDS)
def test_flag_overrides_environment(
    monkeypatch: pytest.MonkeyPatch,
    flag: str,
    variable: str,
    value: str,
    field: str,
    parsed: object,
) -> None:
    monkeypatch.setenv(variable, "2" if isinstance(parsed, int | float) else "from-env")
    config = cli.parse_config(["serve", "model", flag, value])
    assert setting(config, field) == parsed


def test_model_uri_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container can be configured without arguments at all."""
    monkeypatch.setenv("ARROWSMITH_MODEL_URI", "models:/wine@champion")
    assert cli.parse_config(["serve"]).models[0].uri == "models:/wine@champion"
    assert cli.parse_config(["serve", "runs:/abc/model"]).models[0].uri == "runs:/abc/model"


def test_missing_model_uri_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.parse_config(["serve"])
    assert raised.value.code == 2
    assert "MODEL_URI" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grpc-port", "70000"], "--grpc-port 70000 is not a port number"),
        (["--grpc-port", "-1"], "--grpc-port -1 is not a port number"),
        (["--metrics-port", "70000"], "--metrics-port 70000 is not a port number"),
        (["--http-port", "65536"], "--http-port 65536 is not a port number"),
        (["--max-message-size", "-5"], "--max-message-size must be positive"),
        (["--max-message-size", "0"], "--max-message-size must be positive"),
        (["--http-threads", "0"], "--http-threads must be positive"),
        (["--workers", "0"], "--workers must be positive"),
        (
            ["--workers", "2", "--grpc-port", "0"],
            "several --workers share one --grpc-port, which cannot be 0",
        ),
        (["--max-batch-size", "0"], "max_batch_size of model must be positive"),
        (["--max-batch-delay-ms", "-1"], "max_batch_delay_ms of model must not be negative"),
        (["--max-queue-size", "0"], "max_queue_size of model must be positive"),
        (["--poll-interval", "-1"], "--poll-interval -1.0 must be 0 or more seconds"),
        (
            ["--model-control-mode", "poll", "--poll-interval", "0"],
            "--model-control-mode poll needs a --poll-interval above 0",
        ),
        (["--webhook-secret", ""], "--webhook-secret must not be empty"),
    ],
)
def test_invalid_values(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    """The config refuses them; main() turns that into exit code 2 and one line."""
    with pytest.raises(ValueError, match=message):
        cli.parse_config(["serve", "model", *args])
    assert cli.main(["serve", "model", *args]) == 2
    assert capsys.readouterr().err == f"arrowsmith: {message}\n"


def test_invalid_environment_value_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ARROWSMITH_GRPC_PORT", "eighty")
    assert cli.main(["serve", "model"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("arrowsmith: ")
    assert "ARROWSMITH_GRPC_PORT='eighty' is not a valid --grpc-port" in error


def test_non_numeric_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["serve", "model", "--grpc-port", "eighty"])
    assert raised.value.code == 2
    assert "--grpc-port" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["--version"])
    assert raised.value.code == 0
    assert capsys.readouterr().out.strip() == f"arrowsmith {__version__}"


@pytest.mark.parametrize("flag", ["--request-timeout", "--predict-timeout", "--drain-timeout"])
@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_timeouts_must_be_finite_and_not_negative(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    assert cli.main(["serve", "model", flag, value]) == 2
    assert flag in capsys.readouterr().err


def test_config_without_models_is_refused() -> None:
    with pytest.raises(ValueError, match="no model"):
        ServerConfig(models=())


def test_config_file_serves_several_models(tmp_path: pathlib.Path) -> None:
    """Each model's own settings win; the flags give the others."""
    path = write_config(
        tmp_path,
        "models:\n"
        "  - uri: models:/wine/2\n"
        "    max_batch_size: 16\n"
        "  - uri: ./pixels\n"
        "    name: images\n"
        "    max_queue_size: 7\n",
    )
    config = cli.parse_config(["serve", "--config", path, "--max-batch-delay-ms", "1.5"])
    assert config.models == (
        ModelConfig("models:/wine/2", None, 16, 1.5, 1024),
        ModelConfig("./pixels", "images", DEFAULT_MAX_BATCH_SIZE, 1.5, 7),
    )


def test_config_file_from_environment(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARROWSMITH_CONFIG", write_config(tmp_path, "models:\n  - uri: m\n"))
    assert [m.uri for m in cli.parse_config(["serve"]).models] == ["m"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: []\n", "needs a non-empty `models:` list"),
        ("- uri: m\n", "needs a non-empty `models:` list"),
        ("models:\n  - name: wine\n", "each model needs at least a `uri`"),
        ("models:\n  - uri: m\n    batch: 3\n", "unknown model settings ['batch']"),
        (
            "models:\n  - {uri: a, name: same}\n  - {uri: b, name: same}\n",
            "two models would be served as ['same']",
        ),
        (
            "models:\n  - uri: models:/wine/1\n  - uri: models:/wine/1\n",
            "two models would be served as ['wine']",
        ),
        (
            "models:\n  - uri: models:/wine@champion\n  - uri: ./wine\n    name: wine\n",
            "each a distinct `version` to serve them side by side",
        ),
        ("models:\n  - {uri: m, version: ''}\n", "the version of m must be non-empty text"),
        ("models:\n  - {uri: m, max_batch_size: '8'}\n", "max_batch_size of m must be a number"),
        ("models:\n  - {uri: m, max_queue_size: true}\n", "max_queue_size of m must be a number"),
        ("models: [unclosed\n", "is not valid YAML"),
        ("models:\n  - {uri: a, max_batch_size: 0}\n", "max_batch_size of a must be positive"),
        ("models:\n  - {uri: ./m, versions: [1]}\n", "need a registry URI"),
        ("models:\n  - {uri: models:/m/1, versions: 3}\n", "must be a list of version numbers"),
        ("models:\n  - {uri: models:/m/1, versions: [x]}\n", "must be a list of version numbers"),
    ],
)
def test_bad_config_files(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = write_config(tmp_path, text)
    assert cli.main(["serve", "--config", path]) == 2
    error = capsys.readouterr().err
    assert error.startswith("arrowsmith: ")
    assert message in error


def test_missing_config_file_exits_2(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yaml"
    assert cli.main(["serve", "--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_model_uri_and_config_file_together_is_a_usage_error(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "models:\n  - uri: m\n")
    with pytest.raises(SystemExit) as raised:
        cli.parse_config(["serve", "model", "--config", path])
    assert raised.value.code == 2
    assert "not both" in capsys.readouterr().err


@pytest.fixture
def pem_files(tmp_path: pathlib.Path) -> dict[str, str]:
    """Stand-ins for the PEM files: the configuration only checks that they can be read."""
    paths = {}
    for name in ("cert", "key", "ca"):
        path = tmp_path / f"{name}.pem"
        path.write_text(name)
        paths[name] = str(path)
    return paths


def test_tls_flags(pem_files: dict[str, str]) -> None:
    config = cli.parse_config(
        [
            "serve",
            "model",
            "--tls-cert",
            pem_files["cert"],
            "--tls-key",
            pem_files["key"],
            "--tls-client-ca",
            pem_files["ca"],
        ]
    )
    assert (config.tls_cert, config.tls_key, config.tls_client_ca) == (
        pem_files["cert"],
        pem_files["key"],
        pem_files["ca"],
    )


def test_tls_environment_variables(
    monkeypatch: pytest.MonkeyPatch, pem_files: dict[str, str]
) -> None:
    monkeypatch.setenv("ARROWSMITH_TLS_CERT", pem_files["cert"])
    monkeypatch.setenv("ARROWSMITH_TLS_KEY", pem_files["key"])
    monkeypatch.setenv("ARROWSMITH_TLS_CLIENT_CA", pem_files["ca"])
    config = cli.parse_config(["serve", "model", "--tls-client-ca", pem_files["cert"]])
    assert (config.tls_cert, config.tls_key) == (pem_files["cert"], pem_files["key"])
    assert config.tls_client_ca == pem_files["cert"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert"], "--tls-cert and --tls-key go together: give both or neither"),
        (["--tls-key"], "--tls-cert and --tls-key go together: give both or neither"),
        (["--tls-client-ca"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--tls-key", "--tls-client-ca"], "--tls-cert and --tls-key go together"),
    ],
)
def test_incomplete_tls_flags_are_refused(
    pem_files: dict[str, str], capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    args = [part for flag in flags for part in (flag, pem_files["cert"])]
    assert cli.main(["serve", "model", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--tls-cert", "--tls-key", "--tls-client-ca"])
@pytest.mark.parametrize(
    ("target", "reason"), [("absent.pem", "No such file or directory"), (".", "Is a directory")]
)
def test_unreadable_tls_file_is_named(
    tmp_path: pathlib.Path,
    pem_files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    flag: str,
    target: str,
    reason: str,
) -> None:
    paths = {
        "--tls-cert": pem_files["cert"],
        "--tls-key": pem_files["key"],
        "--tls-client-ca": pem_files["ca"],
    }
    bad = str(tmp_path / target)
    paths[flag] = bad
    args = [part for pair in paths.items() for part in pair]
    assert cli.main(["serve", "model", *args]) == 2
    assert capsys.readouterr().err == f"arrowsmith: {flag} {bad} cannot be read: {reason}\n"


def test_unix_socket_flags(tmp_path: pathlib.Path) -> None:
    grpc_uds, http_uds = str(tmp_path / "grpc.sock"), str(tmp_path / "http.sock")
    config = cli.parse_config(
        ["serve", "model", "--workers", "1", "--grpc-uds", grpc_uds, "--http-uds", http_uds]
    )
    assert (config.grpc_uds, config.http_uds, config.uds_only) == (grpc_uds, http_uds, False)
    assert config.http_tcp
    assert config.serves_http
    assert config.metrics_port == 8082


@pytest.mark.parametrize(("value", "parsed"), [("1", True), ("true", True), ("no", False)])
def test_unix_socket_environment_variables(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, value: str, parsed: bool
) -> None:
    monkeypatch.setenv("ARROWSMITH_GRPC_UDS", str(tmp_path / "grpc.sock"))
    monkeypatch.setenv("ARROWSMITH_HTTP_UDS", str(tmp_path / "http.sock"))
    monkeypatch.setenv("ARROWSMITH_UDS_ONLY", value)
    monkeypatch.setenv("ARROWSMITH_WORKERS", "1")
    config = cli.parse_config(["serve", "model"])
    assert config.grpc_uds == str(tmp_path / "grpc.sock")
    assert config.http_uds == str(tmp_path / "http.sock")
    assert config.uds_only is parsed


def test_uds_only_opens_no_tcp_port(tmp_path: pathlib.Path) -> None:
    """No HTTP or metrics port; HTTP only on its socket, and off without one."""
    grpc_uds = str(tmp_path / "grpc.sock")
    only_grpc = ["serve", "model", "--workers", "1", "--uds-only", "--grpc-uds", grpc_uds]
    config = cli.parse_config(only_grpc)
    assert config.uds_only
    assert config.metrics_port == 0
    assert not config.http_tcp
    assert not config.serves_http
    with_http = cli.parse_config([*only_grpc, "--http-uds", str(tmp_path / "http.sock")])
    assert not with_http.http_tcp
    assert with_http.serves_http


def test_http_on_its_socket_only(tmp_path: pathlib.Path) -> None:
    """--http-port 0 with --http-uds: HTTP on the socket, no HTTP port."""
    http_uds = str(tmp_path / "http.sock")
    config = cli.parse_config(
        ["serve", "model", "--workers", "1", "--http-port", "0", "--http-uds", http_uds]
    )
    assert not config.http_tcp
    assert config.serves_http


def test_unknown_uds_only_value_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ARROWSMITH_UDS_ONLY", "maybe")
    assert cli.main(["serve", "model"]) == 2
    assert "ARROWSMITH_UDS_ONLY='maybe' is not a valid --uds-only" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--uds-only"], "--uds-only needs --grpc-uds, the socket gRPC is served on"),
        (
            ["--uds-only", "--grpc-uds", "{tmp}/g.sock", "--metrics-port", "9100"],
            "--uds-only opens no TCP port: --metrics-port must be 0",
        ),
        (
            ["--workers", "2", "--grpc-uds", "{tmp}/g.sock"],
            "several --workers cannot share the Unix socket of --grpc-uds: give --workers 1",
        ),
        (
            ["--workers", "2", "--http-uds", "{tmp}/h.sock"],
            "several --workers cannot share the Unix socket of --http-uds: give --workers 1",
        ),
        (
            ["--grpc-uds", "{tmp}/same.sock", "--http-uds", "{tmp}/same.sock"],
            "--grpc-uds and --http-uds must be different paths",
        ),
        (
            ["--http-uds", "{tmp}/absent/h.sock"],
            "--http-uds {tmp}/absent/h.sock: the folder {tmp}/absent does not exist",
        ),
        (
            ["--grpc-uds", "{tmp}/" + "s" * 120],
            "--grpc-uds {tmp}/" + "s" * 120 + " is longer than a Unix socket path may be "
            "(107 bytes)",
        ),
    ],
)
def test_invalid_unix_socket_settings(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    args = [arg.format(tmp=tmp_path) for arg in args]
    workers = [] if "--workers" in args else ["--workers", "1"]
    assert cli.main(["serve", "model", *workers, *args]) == 2
    assert capsys.readouterr().err == f"arrowsmith: {message.format(tmp=tmp_path)}\n"


def test_lifecycle_flags_and_versions(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - {uri: 'models:/wine@champion', versions: [3, '4']}\n")
    config = cli.parse_config(
        [
            "serve",
            "--config",
            str(path),
            "--poll-interval",
            "5",
            "--webhook-secret",
            "s",
            "--model-control-mode",
            "explicit",
        ]
    )
    assert config.models[0].versions == ("3", "4")
    assert (config.poll_interval, config.webhook_secret, config.model_control_mode) == (
        5.0,
        "s",
        "explicit",
    )
    defaults = cli.parse_config(["serve", "models:/wine@champion"])
    assert (defaults.poll_interval, defaults.webhook_secret, defaults.model_control_mode) == (
        30.0,
        None,
        "none",
    )


def test_entries_of_one_name_are_versions_side_by_side(tmp_path: pathlib.Path) -> None:
    """Entries may share a name as distinct versions: by `version`, or by a registry URI's
    version number."""
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - {uri: 'models:/wine@champion'}\n"
        "  - {uri: 'models:/wine/2'}\n"
        "  - {uri: ./wine-local, name: wine, version: 7}\n"
    )
    models = cli.parse_config(["serve", "--config", str(path)]).models
    assert [(m.served_name, m.version_label) for m in models] == [
        ("wine", None),
        ("wine", "2"),
        ("wine", "7"),
    ]
