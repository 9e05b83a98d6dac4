"""The manifests in deploy/, checked offline as the cluster and the server would read them.

Every document validates strictly (an unknown field is refused, as kubectl's strict field
validation does) against Kubernetes' schemas, as kubernetes-validate carries them for the
oldest and newest versions the manifests are written for, or against KServe's CRD schemas
(tests/schemas/kserve/). Every flag and ARROWSMITH_* variable given to Arrowsmith is one
`arrowsmith serve --help` lists and parses; the declared ports are the ones the arguments
configure; the probes ask the gRPC health; the grace period covers the preStop pause and the
drain; and the manifests name each other (runtime, Deployment, selectors) consistently."""

import copy
import functools
import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from arrowsmith import cli
from arrowsmith.tracing import TracingFlags, resolve

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KSERVE_SCHEMAS = ROOT / "tests" / "schemas" / "kserve"
#: Native sidecars (init containers with restartPolicy Always) need 1.29; 1.37 is the newest
#: kubernetes-validate carries.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
CRD_SCHEMAS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "clusterservingruntime-v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-v1beta1.json",
}
#: Kubernetes' terminationGracePeriodSeconds when a pod does not set it.
DEFAULT_GRACE_S = 30
#: What the grace period must leave past the preStop pause and the drain for the processes
#: to exit.
EXIT_MARGIN_S = 5
#: Where the image points HOME, XDG_CACHE_HOME and the environment cache, and its TMPDIR.
WRITABLE_PATHS = ("/tmp", "/var/cache/arrowsmith")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def load_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every YAML document under deploy/, with `path#index` as its name."""
    return [
        (f"{path.relative_to(DEPLOY)}#{index}", document)
        for path in sorted(DEPLOY.rglob("*.yaml"))
        for index, document in enumerate(yaml.safe_load_all(path.read_text()))
        if document is not None
    ]


DOCUMENTS = load_documents()


def the(kind: str) -> list[dict[str, Any]]:
    return [document for _, document in DOCUMENTS if document["kind"] == kind]


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema with unknown fields refused wherever it lists an object's fields (the
    API server prunes or, under strict field validation, refuses them; a JSON Schema
    validator would let them pass)."""
    result = dict(schema)
    if isinstance(result.get("additionalProperties"), dict):
        result["additionalProperties"] = closed(result["additionalProperties"])
    if isinstance(result.get("items"), dict):
        result["items"] = closed(result["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in result:
            result[key] = [closed(part) for part in result[key]]
    if "properties" in result:
        result["properties"] = {name: closed(part) for name, part in result["properties"].items()}
        if "additionalProperties" not in result and not result.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            result["additionalProperties"] = False
    return result


@functools.cache
def crd_validator(file_name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((KSERVE_SCHEMAS / file_name).read_text())
    return jsonschema.Draft4Validator(closed(schema))


def validate(document: dict[str, Any], kubernetes_version: str) -> None:
    """Raises jsonschema.ValidationError when `document` is not what the API server takes."""
    schema = CRD_SCHEMAS.get((document["apiVersion"], document["kind"]))
    if schema is None:
        kubernetes_validate.validate(document, kubernetes_version, strict=True)
        return
    crd_validator(schema).validate(document)
    # A CRD's schema leaves metadata to the API server, which reads it as ObjectMeta: checked
    # here as a ConfigMap's.
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]}
    kubernetes_validate.validate(configmap, kubernetes_version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("name", "document"), DOCUMENTS, ids=[name for name, _ in DOCUMENTS])
def test_document_validates(name, document, version):
    validate(document, version)


def _misspell_probe(deployment):
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProb"] = container.pop("readinessProbe")


def _replicas_as_text(deployment):
    deployment["spec"]["replicas"] = "two"


def _misspell_formats(runtime):
    runtime["spec"]["supportedModelFormat"] = runtime["spec"].pop("supportedModelFormats")


def _priority_as_text(runtime):
    runtime["spec"]["supportedModelFormats"][0]["priority"] = "high"


def _misspell_storage_uri(service):
    model = service["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")


def _misspell_annotations(service):
    service["metadata"]["annotation"] = service["metadata"].pop("annotations")


@pytest.mark.parametrize(
    ("kind", "break_it"),
    [
        ("Deployment", _misspell_probe),
        ("Deployment", _replicas_as_text),
        ("ClusterServingRuntime", _misspell_formats),
        ("ClusterServingRuntime", _priority_as_text),
        ("InferenceService", _misspell_storage_uri),
        ("InferenceService", _misspell_annotations),
    ],
)
def test_a_broken_document_is_refused(kind, break_it: Callable[[dict[str, Any]], None]):
    """The validation is on: a misspelled field or a wrong type fails it."""
    document = copy.deepcopy(the(kind)[0])
    break_it(document)
    with pytest.raises(jsonschema.ValidationError):
        validate(document, KUBERNETES_VERSIONS[-1])


# Arrowsmith's containers: their arguments and environment against the CLI.


@functools.cache
def serve_help() -> str:
    return subprocess.run(
        [sys.executable, "-m", "arrowsmith", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def serve_flags() -> set[str]:
    return set(re.findall(r"--[a-z][a-z0-9-]*", serve_help()))


def opentelemetry_variables() -> set[str]:
    """The standard OTEL_* variables the help says the server reads."""
    return set(re.findall(r"OTEL_[A-Z_]+", serve_help()))


def pod_specs() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, pod spec, pod annotations) of each document that runs containers; a serving
    runtime's spec stands for the pods KServe makes from it."""
    for name, document in DOCUMENTS:
        if document["kind"] == "Deployment":
            template = document["spec"]["template"]
            yield name, template["spec"], template["metadata"].get("annotations", {})
        elif document["kind"] == "ClusterServingRuntime":
            yield name, document["spec"], document["spec"].get("annotations", {})


def is_arrowsmith(container: dict[str, Any]) -> bool:
    return bool(container["image"].rpartition(":")[0].endswith("arrowsmith"))


ARROWSMITH = [
    (name, spec, annotations, container)
    for name, spec, annotations in pod_specs()
    for container in [*spec.get("initContainers", []), *spec["containers"]]
    if is_arrowsmith(container)
]
each_arrowsmith = pytest.mark.parametrize(
    ("name", "spec", "annotations", "container"), ARROWSMITH, ids=[name for name, *_ in ARROWSMITH]
)


def test_there_is_arrowsmith_to_check():
    assert len(ARROWSMITH) == 3  # the KServe runtime, the Deployment, the sidecar


def serve_arguments(container: dict[str, Any]) -> list[str]:
    """What follows `arrowsmith serve`: the image's entry point, or a command that says it."""
    command = container.get("command", [])
    assert command in ([], ["arrowsmith", "serve"]), command
    return list(container.get("args", []))


def environment(container: dict[str, Any]) -> dict[str, str]:
    return {variable["name"]: variable["value"] for variable in container.get("env", [])}


def parse(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The container's arguments and ARROWSMITH_* variables as `arrowsmith serve` reads them."""
    with monkeypatch.context() as patch:
        for variable in [v for v in os.environ if v.startswith("ARROWSMITH_")]:
            patch.delenv(variable)
        for variable, value in environment(container).items():
            if variable.startswith("ARROWSMITH_"):
                patch.setenv(variable, value)
        args = cli._parser().parse_args(["serve", *serve_arguments(container)])
    args.metrics_port = cli._tcp_port(args.metrics_port, 8082, args)
    args.flight_port = cli._tcp_port(args.flight_port, 8083, args)
    return args


@each_arrowsmith
def test_flags_are_serves(name, spec, annotations, container):
    given = {argument.partition("=")[0] for argument in serve_arguments(container)}
    assert {flag for flag in given if flag.startswith("--")} <= serve_flags()


@each_arrowsmith
def test_variables_are_flags_or_opentelemetry_ones(name, spec, annotations, container):
    variables = environment(container)
    for variable in variables:
        if variable.startswith("ARROWSMITH_"):
            flag = "--" + variable.removeprefix("ARROWSMITH_").lower().replace("_", "-")
            assert flag in serve_flags() or variable == "ARROWSMITH_MODEL_URI", variable
        else:
            assert variable in opentelemetry_variables(), variable
    # Their values hold once an endpoint turns tracing on.
    otel = {key: value for key, value in variables.items() if key.startswith("OTEL_")}
    resolve(TracingFlags(endpoint="http://collector:4318/v1/traces"), otel)


@each_arrowsmith
def test_declared_ports_are_the_configured_ones(name, spec, annotations, container, monkeypatch):
    args = parse(container, monkeypatch)
    declared = {port["containerPort"]: port["name"] for port in container.get("ports", [])}
    prometheus_port = annotations.get("prometheus.kserve.io/port") or annotations.get(
        "prometheus.io/port"
    )
    if args.host in LOOPBACK or args.uds_only:
        assert declared == {}, "nothing outside the pod reaches these ports"
        assert prometheus_port is None
        return
    assert set(declared) <= {args.grpc_port, args.http_port, args.metrics_port, args.flight_port}
    assert declared[args.grpc_port] in ("h2c", "grpc")
    assert args.http_port in declared
    assert prometheus_port == str(args.metrics_port)
    if args.flight_port in declared:
        assert declared[args.flight_port] == "flight"


@each_arrowsmith
def test_probes_ask_grpc_health(name, spec, annotations, container, monkeypatch):
    """Startup and readiness ask health "" (SERVING once the models are loaded and warmed
    up), liveness "liveness" (SERVING while the process runs): over the gRPC port, or with
    `arrowsmith health` over the gRPC socket."""
    args = parse(container, monkeypatch)
    for probe, service in (
        ("startupProbe", ""),
        ("readinessProbe", ""),
        ("livenessProbe", "liveness"),
    ):
        handler = container[probe]
        if "grpc" in handler:
            assert args.host not in LOOPBACK, "the kubelet dials the pod's IP"
            assert handler["grpc"] == {"port": args.grpc_port, "service": service}
        else:
            command = handler["exec"]["command"]
            assert command[:2] == ["arrowsmith", "health"]
            health = cli._parser().parse_args(command[1:])
            assert (health.uds, health.service) == (args.grpc_uds, service)
            assert args.grpc_uds is not None


def pre_stop_seconds(container: dict[str, Any]) -> int:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


@each_arrowsmith
def test_grace_period_covers_pre_stop_and_drain(name, spec, annotations, container, monkeypatch):
    args = parse(container, monkeypatch)
    grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
    assert grace >= pre_stop_seconds(container) + args.drain_timeout + EXIT_MARGIN_S


def cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@each_arrowsmith
def test_workers_match_the_cpu_limit(name, spec, annotations, container, monkeypatch):
    """Under a CPU limit (a CFS quota, not a cpuset) the default, the cores the process may
    run on, is the node's."""
    args = parse(container, monkeypatch)
    assert args.workers == cores(container["resources"]["limits"]["cpu"])
    if args.grpc_uds or args.http_uds:
        assert args.workers == 1


@each_arrowsmith
def test_runs_locked_down_with_writable_scratch(name, spec, annotations, container, monkeypatch):
    """Non-root on a read-only root filesystem, the image's writable paths on emptyDirs."""
    security = {**spec.get("securityContext", {}), **container["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    empty_dirs = {volume["name"] for volume in spec["volumes"] if "emptyDir" in volume}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    for path in WRITABLE_PATHS:
        assert mounts[path]["name"] in empty_dirs, path
    args = parse(container, monkeypatch)
    if args.env_cache is not None:
        assert args.env_cache.startswith(WRITABLE_PATHS[1] + "/")
    model_mount = [path for path in mounts if args.model_uri.startswith(path + "/")]
    assert all(mounts[path].get("readOnly") for path in model_mount)


def version() -> str:
    project: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return project


@each_arrowsmith
def test_image_is_the_one_make_image_builds(name, spec, annotations, container):
    assert container["image"] == f"arrowsmith:{version()}"


def test_sidecar_shares_its_socket_folder(monkeypatch):
    [(_, spec, _, container)] = [entry for entry in ARROWSMITH if entry[0].startswith("sidecar/")]
    assert container in spec["initContainers"] and container["restartPolicy"] == "Always"
    args = parse(container, monkeypatch)
    folder = str(pathlib.PurePosixPath(args.grpc_uds).parent)
    volume = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == folder)
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == volume)
    app_mounts = [
        (mount["name"], mount["mountPath"])
        for app in spec["containers"]
        for mount in app.get("volumeMounts", [])
    ]
    assert (volume, folder) in app_mounts


# KServe: the runtime and the InferenceService that uses it.


def test_kserve_runtime_serves_the_model_kserve_downloads(monkeypatch):
    [runtime] = the("ClusterServingRuntime")
    [container] = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    args = parse(container, monkeypatch)
    assert (args.model_uri, args.name) == ("/mnt/models", "{{.Name}}")
    assert "h2c" in {port["name"] for port in container["ports"]}
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    formats = runtime["spec"]["supportedModelFormats"]
    assert {(f["name"], f["version"]) for f in formats} == {("mlflow", v) for v in "123"}
    assert all(f["autoSelect"] for f in formats)


def test_inference_service_uses_the_runtime():
    [runtime] = the("ClusterServingRuntime")
    [service] = the("InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


# The plain Kubernetes set: Service, autoscaler and disruption budget find the Deployment.


def test_service_autoscaler_and_budget_find_the_deployment():
    [deployment] = [d for name, d in DOCUMENTS if name.startswith("kubernetes/deployment")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    [service] = the("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    [budget] = the("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [autoscaler] = the("HorizontalPodAutoscaler")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for port in service["spec"]["ports"]:
        assert ports[port["targetPort"]] == port["port"]
    grpc_port = next(port for port in service["spec"]["ports"] if port["name"] == "grpc")
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
