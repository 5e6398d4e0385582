"""The Helm chart and the KServe InferenceService: they render, every object is valid for each
Kubernetes release from 1.30 to 1.37 (custom resources against their CRDs' schemas), and what
they run is what the image and the service really use: command, port, probes, settings.

Needs helm (`scripts/install-helm` puts a pinned one in .tools/bin) and kubernetes-validate."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.app import create_app
from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "deploy" / "helm" / "cifar-serving"
SCHEMAS = REPO / "deploy" / "schemas"
INFERENCE_SERVICE = REPO / "deploy" / "kserve" / "inferenceservice.yaml"
INFERENCE_SERVICE_GRPC = REPO / "deploy" / "kserve" / "inferenceservice-grpc.yaml"
# Values files rendered and validated: the defaults and each example beside them.
VALUES = {"default": None, "gpu": "values-gpu.yaml", "autoscaling": "values-autoscaling.yaml"}
VALUES["training"] = "values-training.yaml"
# Every minor release in the range that kubernetes-validate 1.37 bundles a schema for (all of them).
KUBERNETES = [f"1.{minor}" for minor in range(30, 38)]
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-serving.kserve.io-v1beta1.json",
}


# CI installs helm and Docker: there a skip fails (tests/conftest.py, CIFAR_SERVING_REQUIRE_ALL).
pytestmark = pytest.mark.required_in_ci


@functools.cache
def helm_binary() -> str | None:
    installed = REPO / ".tools" / "bin" / "helm"
    return str(installed) if installed.is_file() else shutil.which("helm")


@pytest.fixture(scope="module")
def helm() -> str:
    if helm_binary() is None:
        pytest.skip("no helm: run scripts/install-helm")
    return helm_binary()


def render(values: str | None, *sets: str) -> list[dict]:
    """The objects `helm template` renders with these values (a copy each time: tests may edit)."""
    if helm_binary() is None:
        pytest.skip("no helm: run scripts/install-helm")
    return copy.deepcopy(_rendered(values, *sets))


@functools.cache
def _rendered(values: str | None, *sets: str) -> tuple[dict, ...]:
    command = [helm_binary(), "template", "cifar", str(CHART)]
    if values:
        command += ["-f", str(CHART / values)]
    for assignment in sets:
        command += ["--set", assignment]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(objects, kind: str) -> dict:
    [found] = [obj for obj in objects if obj["kind"] == kind]
    return found


def api_container(objects) -> dict:
    [container] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, str | None]:
    return {var["name"]: var.get("value") for var in container.get("env", [])}


@functools.cache
def service_stage() -> dict:
    """CMD, EXPOSE, USER and ENV of the Dockerfile's last stage: the image the chart runs."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    stage = text[text.rindex("\nFROM ") :]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV (.*)$", stage, re.MULTILINE))))
    return {
        "cmd": json.loads(re.findall(r"^CMD (\[.*\])$", stage, re.MULTILINE)[-1]),
        "expose": [int(port) for port in re.search(r"^EXPOSE ([\d ]+)$", stage, re.MULTILINE)[1].split()],
        "uid": int(re.search(r"^USER (\d+)", stage, re.MULTILINE)[1]),
        "env": env,
    }


SETTINGS = {field.upper() for field in Settings.model_fields}


def get_routes() -> set[str]:
    """The paths the service answers GET on, from its OpenAPI schema."""
    return {path for path, operations in create_app().openapi()["paths"].items() if "get" in operations}


def strict(schema):
    """A CRD schema as the API server prunes it, as a rejection: unknown fields are errors."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


@functools.cache
def crd_validator(api_version: str, kind: str):
    schema = strict(json.loads((SCHEMAS / CUSTOM[api_version, kind]).read_text()))
    return jsonschema.Draft7Validator(schema)


def crd_errors(obj: dict) -> list[str]:
    validator = crd_validator(obj["apiVersion"], obj["kind"])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def k8s_errors(obj: dict, version: str) -> list[str]:
    import kubernetes_validate  # a declared test dependency: missing fails, never skips

    try:
        used = kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{obj['kind']} {obj['metadata']['name']}: {error.message}"]
    assert used == version, f"kubernetes-validate has no {version} schemas (used {used})"
    return []


# Rendering and validity


@pytest.mark.parametrize("values", VALUES)
def test_chart_lints_clean(helm, values):
    command = [helm, "lint", "--strict", str(CHART)]
    if VALUES[values]:
        command += ["-f", str(CHART / VALUES[values])]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_values_file_renders_what_it_is_for(helm):
    kinds = {name: sorted(obj["kind"] for obj in render(values)) for name, values in VALUES.items()}
    core = ["Deployment", "PersistentVolumeClaim", "PodDisruptionBudget", "Service"]
    assert kinds["default"] == core
    assert kinds["gpu"] == core
    monitoring = ["ConfigMap", "PrometheusRule", "ServiceMonitor"]
    assert kinds["autoscaling"] == sorted(core + monitoring + ["HorizontalPodAutoscaler", "Ingress"])
    assert kinds["training"] == sorted(core + ["Job"])


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("values", VALUES)
def test_every_rendered_object_is_valid_kubernetes(helm, values, version):
    objects = [obj for obj in render(VALUES[values]) if (obj["apiVersion"], obj["kind"]) not in CUSTOM]
    errors = [error for obj in objects for error in k8s_errors(obj, version)]
    assert not errors, "\n".join(errors)


def test_custom_resources_match_their_crd_schemas(helm):
    objects = render(VALUES["autoscaling"])
    inference_services = [
        yaml.safe_load(path.read_text()) for path in (INFERENCE_SERVICE, INFERENCE_SERVICE_GRPC)
    ]
    for obj in (one(objects, "ServiceMonitor"), one(objects, "PrometheusRule"), *inference_services):
        assert not crd_errors(obj), crd_errors(obj)


def test_validators_reject_an_unknown_field():
    """Strict means strict: a misspelt field fails both kinds of validation."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "readinesProbe": {}}]},
            },
        },
    }
    assert k8s_errors(deployment, KUBERNETES[-1])
    inference_service = yaml.safe_load(INFERENCE_SERVICE.read_text())
    inference_service["spec"]["predictor"]["protocolVersion"] = "v2"  # not a custom predictor's field
    assert crd_errors(inference_service)


# No drift between the chart, the image and the service


def test_deployment_runs_what_the_image_runs():
    image = service_stage()
    deployment = one(render(None), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = api_container(render(None))
    env = env_of(container)
    assert container["command"] == image["cmd"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert [ports["http"], ports["grpc"]] == image["expose"]
    assert ports["http"] == int(env["PORT"]) == int(image["env"]["PORT"])
    assert ports["grpc"] == int(env["GRPC_PORT"]) == Settings.model_fields["grpc_port"].default
    assert env["HOST"] == "0.0.0.0", "the service's default, 127.0.0.1, is unreachable from outside the pod"
    assert pod["securityContext"]["runAsUser"] == image["uid"]


def test_deployment_sets_only_real_service_settings_with_valid_values():
    for values in VALUES.values():
        env = env_of(api_container(render(values)))
        assert set(env) <= SETTINGS, f"not service settings: {set(env) - SETTINGS}"
        Settings(**{name.lower(): value for name, value in env.items() if value is not None})


def test_probes_ask_the_services_health_endpoints_on_its_port():
    container = api_container(render(None))
    probes = {
        name: container[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert {name: probe["path"] for name, probe in probes.items()} == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    assert {probe["port"] for probe in probes.values()} == {container["ports"][0]["name"]}
    assert {"/readyz", "/healthz"} <= get_routes()


def test_grace_period_outlasts_the_prestop_pause_and_the_drain():
    for values in VALUES.values():
        objects = render(values)
        pod = one(objects, "Deployment")["spec"]["template"]["spec"]
        container = api_container(objects)
        drain = int(env_of(container)["SHUTDOWN_TIMEOUT_S"])
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pause > 0
        assert pod["terminationGracePeriodSeconds"] > pause + drain


def test_models_are_mounted_read_only_where_model_dir_points():
    objects = render(None)
    container = api_container(objects)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert mount["mountPath"] == env_of(container)["MODEL_DIR"] and mount["readOnly"] is True
    volume = next(
        v for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "models"
    )
    claim = one(objects, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]


MODEL_IMAGE = (
    "models.source=image",
    "models.image.repository=registry.example/cifar-models",
    "models.image.tag=4",
)


def test_models_from_an_image_are_copied_by_an_init_container_into_the_served_volume():
    objects = render(None, *MODEL_IMAGE)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["image"] == "registry.example/cifar-models:4"
    assert init["command"] == ["cp", "-R", "/models/.", init["volumeMounts"][0]["mountPath"] + "/"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert "emptyDir" in volume and init["volumeMounts"][0]["name"] == "models"
    assert "PersistentVolumeClaim" not in {obj["kind"] for obj in objects}
    errors = [error for version in KUBERNETES for obj in objects for error in k8s_errors(obj, version)]
    assert not errors, "\n".join(errors)


def test_pods_are_locked_down():
    for values in VALUES.values():
        objects = render(values)
        pods = [one(objects, "Deployment")["spec"]["template"]["spec"]]
        pods += [obj["spec"]["template"]["spec"] for obj in objects if obj["kind"] == "Job"]
        for pod in pods:
            assert pod["automountServiceAccountToken"] is False
            assert pod["securityContext"]["runAsNonRoot"] is True
            for container in pod["containers"] + pod.get("initContainers", []):
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True
                assert context["allowPrivilegeEscalation"] is False
                assert context["capabilities"]["drop"] == ["ALL"]
                assert (
                    "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
                    or container["name"] == "models"
                )


def test_ingress_body_limit_is_the_services():
    objects = render(VALUES["autoscaling"])
    annotations = one(objects, "Ingress")["metadata"]["annotations"]
    assert (
        annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
        == env_of(api_container(objects))["MAX_UPLOAD_BYTES"]
    )


def test_queue_depth_autoscaling_uses_a_metric_the_service_exports():
    from service.metrics import Metrics

    hpa = one(render(VALUES["autoscaling"]), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    [pods] = [metric["pods"] for metric in hpa["spec"]["metrics"] if metric["type"] == "Pods"]
    exported = {metric.name for metric in Metrics().registry.collect()}
    assert pods["metric"]["name"] in exported


def test_gpu_values_ask_for_a_gpu_node_and_refuse_to_run_without_one():
    objects = render(VALUES["gpu"])
    container = api_container(objects)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(container)["DEVICE"] == "gpu"
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_training_job_exports_into_the_claim_the_pods_serve_from():
    objects = render(VALUES["training"])
    job = one(objects, "Job")["spec"]["template"]["spec"]
    served = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    claim = next(v for v in served if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
    volume = next(v for v in job["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    [train] = job["containers"]
    mount = next(m for m in train["volumeMounts"] if m["name"] == "models")
    args = train["args"]
    assert args[0] in {"cifar10", "iris"} and args[args.index("--out") + 1] == mount["mountPath"]


def test_inference_service_runs_the_image_on_the_port_it_declares():
    inference_service = yaml.safe_load(INFERENCE_SERVICE.read_text())
    [container] = inference_service["spec"]["predictor"]["containers"]
    env = env_of(container)
    kserve_own = {"PROTOCOL", "STORAGE_URI"}  # read by KServe's controller, not by the service
    assert set(env) - kserve_own <= SETTINGS
    assert env["PROTOCOL"] == "v2"
    assert container["command"] == service_stage()["cmd"]
    assert container["ports"][0]["containerPort"] == int(env["PORT"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": int(env["PORT"])}
    assert env["MODEL_DIR"] == "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI


def test_the_prometheus_rule_ships_the_rule_group_promtool_tests():
    rule = one(render(VALUES["autoscaling"]), "PrometheusRule")
    plain = yaml.safe_load((CHART / "monitoring" / "rules.yaml").read_text())
    assert rule["spec"] == plain  # tests/test_prometheus.py runs promtool on the plain file


def test_the_dashboard_is_a_configmap_grafanas_sidecar_loads():
    dashboard = one(render(VALUES["autoscaling"]), "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    [text] = dashboard["data"].values()
    assert json.loads(text) == json.loads((CHART / "monitoring" / "dashboard.json").read_text())


def test_the_startup_probe_covers_model_loading_before_liveness_is_asked():
    """Loading and warming up the models is the startup probe's (/readyz) to wait for, at least
    as long as Compose's start period; /healthz answers meanwhile (tests/test_service_workers.py),
    and Kubernetes asks it only once the startup probe has passed."""
    container = api_container(render(None))
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    start_period = compose["services"]["api"]["healthcheck"]["start_period"]
    default_s = int(re.fullmatch(r"\$\{API_START_PERIOD:-(\d+)s\}", start_period)[1])
    assert startup["periodSeconds"] * startup["failureThreshold"] >= default_s


def test_grpc_is_served_on_a_port_named_for_h2c_and_can_be_probed_natively(helm):
    objects = render(None)
    container = api_container(objects)
    grpc_port = next(port for port in container["ports"] if port["name"] == "grpc")
    assert grpc_port["containerPort"] == int(env_of(container)["GRPC_PORT"])
    service_port = next(port for port in one(objects, "Service")["spec"]["ports"] if port["name"] == "grpc")
    assert service_port["targetPort"] == "grpc" and service_port["appProtocol"] == "kubernetes.io/h2c"
    probed = render(None, "grpc.probes=true")
    container = api_container(probed)
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"] == {"port": grpc_port["containerPort"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness must not wait for models"
    assert not [error for obj in probed for error in k8s_errors(obj, KUBERNETES[0])]
    off = render(None, "grpc.containerPort=0")
    assert [port["name"] for port in api_container(off)["ports"]] == ["http"]
    assert env_of(api_container(off))["GRPC_PORT"] == "0"
    assert [port["name"] for port in one(off, "Service")["spec"]["ports"]] == ["http"]


def test_grpc_inference_service_routes_h2c_to_the_services_grpc_port():
    inference_service = yaml.safe_load(INFERENCE_SERVICE_GRPC.read_text())
    [container] = inference_service["spec"]["predictor"]["containers"]
    env = env_of(container)
    assert set(env) - {"PROTOCOL", "STORAGE_URI"} <= SETTINGS
    assert env["PROTOCOL"] == "grpc-v2"
    [port] = container["ports"]
    assert port["name"] == "h2c" and port["containerPort"] == int(env["GRPC_PORT"])
    assert container["readinessProbe"]["grpc"] == {"port": port["containerPort"]}
    assert container["command"] == service_stage()["cmd"]
