"""Checks the hubcast Helm chart and the plain manifests in k8s/ (run by scripts/helm-check.sh).

1. `helm lint --strict` (Helm's Go SDK through helm-python-sdk) with the default values, the CI values and
   every scenario in tests/helm/values/.
2. Renders each of them offline and validates every object with kubernetes-validate in strict mode (unknown
   fields are errors) against the oldest Kubernetes the chart supports and the newest the tool knows.
   ServiceMonitor, a CRD kind, is validated against tests/helm/servicemonitor-v1.schema.json; any other kind
   without a schema is an error.
3. Checks what a schema cannot: references between objects (selectors, Service ports, HPA target), the
   security settings, secrets only through secretKeyRef, every HUBCAST_* name a key of the README's
   configuration table, service links off, a grace period that covers the drain.
4. Every values file in tests/helm/invalid/ must be refused, with the message its `# expect:` line names.
5. k8s/ must hold exactly the default render (`--update` rewrites it), and every file there validates.
6. When a hubcast binary is at hand ($HUBCAST_BIN, target/release or target/debug), it must load every
   rendered configuration (ConfigMap and env), as the pods would.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import jsonschema
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
from kubernetes_validate.version import __version__ as kv_version
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "hubcast"
K8S_DIR = ROOT / "k8s"
K8S_FILE = K8S_DIR / "hubcast.yaml"
HERE = Path(__file__).resolve().parent
SERVICEMONITOR_SCHEMA = HERE / "servicemonitor-v1.schema.json"

# The chart's kubeVersion floor (Chart.yaml) and the newest Kubernetes kubernetes-validate knows.
MIN_KUBE = "1.30.0"
KUBE_VERSIONS = [MIN_KUBE, kv_utils.latest_version()]
RELEASE = "hubcast"
NAMESPACE = "hubcast"

# Kinds that are not Kubernetes' own, with the schema that validates them instead.
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICEMONITOR_SCHEMA}

# hubcast's settings (README, "Configuration"); the README's table wins when it can be read.
FALLBACK_KEYS = """listen auth.jwt_secret auth.jwt_public_key_file auth.issuer auth.audience auth.master_key
bus.amqp_url bus.exchange_prefix bus.queue_type bus.prefetch bus.max_event_bytes bus.state_stream_max_bytes
bus.node_id limits.connections_per_key limits.max_message_size limits.outbound_buffer_bytes
limits.write_timeout limits.invocations_per_second limits.invocation_burst signalr.keep_alive_interval
signalr.client_timeout signalr.handshake_timeout signalr.negotiate_timeout signalr.long_poll_timeout
signalr.disconnect_timeout signalr.stateful_reconnect_buffer_bytes spend.budget_thresholds
spend.alert_cooldown webhooks.statistics_window""".split()
SECRET_KEYS = {"bus.amqp_url", "auth.jwt_secret", "auth.master_key"}

# Helm's install order (pkg/release/util/kind_sorter.go), so k8s/hubcast.yaml applies in a sensible order.
INSTALL_ORDER = """PriorityClass Namespace NetworkPolicy ResourceQuota LimitRange PodSecurityPolicy
PodDisruptionBudget ServiceAccount Secret SecretList ConfigMap StorageClass PersistentVolume
PersistentVolumeClaim CustomResourceDefinition ClusterRole ClusterRoleList ClusterRoleBinding
ClusterRoleBindingList Role RoleList RoleBinding RoleBindingList Service DaemonSet Pod
ReplicationController ReplicaSet Deployment HorizontalPodAutoscaler StatefulSet Job CronJob IngressClass
Ingress APIService MutatingWebhookConfiguration ValidatingWebhookConfiguration""".split()

K8S_HEADER = """\
# hubcast: plain Kubernetes manifests for users without Helm.
#
# GENERATED from helm/hubcast with its default values (release name "hubcast") by
#   scripts/helm-check.sh --update
# Do not edit by hand: change the chart, then regenerate. `make helm-check` fails while this file differs
# from the chart's render.
#
# Before applying, build and push the image (see Dockerfile), set it below (image: hubcast:0.1.0), and
# create the Secret the pods read, in the namespace you deploy to:
#   kubectl -n <namespace> create secret generic hubcast \\
#     --from-literal=amqp-url='amqp://user:password@rabbitmq:5672/%2f' \\
#     --from-literal=jwt-secret="$(openssl rand -hex 32)" \\
#     --from-literal=master-key="sha256:$(printf %s "$MASTER_KEY" | sha256sum | cut -d' ' -f1)"
#   kubectl -n <namespace> apply -f k8s/hubcast.yaml
#
# Two edges (hubcast edge) and two routers (hubcast router) on RabbitMQ. Several edges need sticky sessions:
# put them behind an ingress with cookie affinity (see helm/hubcast/values.yaml, `ingress`).
"""


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")
        print(f"  FAIL {where}: {message}")


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: not a mapping of values")
    return data


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---------------------------------------------------------------------------------------------- config keys


def allowed_keys() -> tuple[set[str], str]:
    """The configuration keys of the README's table, or the built-in list when it cannot be read."""
    readme = ROOT / "README.md"
    keys: set[str] = set()
    if readme.exists():
        section = re.search(r"^## Configuration\n(.*?)(?=^## )", readme.read_text(), re.S | re.M)
        if section:
            for line in section.group(1).splitlines():
                if line.startswith("| `"):
                    first_cell = line.split("|")[1]
                    keys.update(re.findall(r"`([a-z_][a-z0-9_.]*)`", first_cell))
    if len(keys) >= 10:
        return keys, "README.md's configuration table"
    return set(FALLBACK_KEYS), "the built-in list (README.md's configuration table was not found)"


def env_name(key: str) -> str:
    return "HUBCAST_" + key.upper().replace(".", "__")


# ------------------------------------------------------------------------------------------------ rendering


def split_documents(rendered: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(template, text, object) of every non-empty document, in Helm's install order."""
    documents = []
    for template, text in rendered.items():
        if template.endswith("NOTES.txt"):
            continue
        for chunk in re.split(r"^---[ \t]*$", text, flags=re.M):
            obj = yaml.safe_load(chunk)
            if obj is None:
                continue
            body = "\n".join(line.rstrip() for line in chunk.strip("\n").splitlines())
            source = template.split("/", 1)[1] if "/" in template else template
            documents.append((f"hubcast/{source}", body, obj))

    def order(item: tuple[str, str, dict[str, Any]]) -> tuple[int, str, str]:
        kind = item[2].get("kind", "")
        rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
        return (rank, str(item[2].get("metadata", {}).get("name", "")), item[0])

    return sorted(documents, key=order)


def render(values: dict[str, Any] | None, release: str = RELEASE) -> tuple[dict[str, str], str]:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values or {})
        rendered = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    notes = next((text for name, text in rendered.items() if name.endswith("NOTES.txt")), "")
    return rendered, notes


def manifest_text(documents: list[tuple[str, str, dict[str, Any]]]) -> str:
    parts = [K8S_HEADER]
    for source, body, _ in documents:
        parts.append(f"---\n# Source: {source}\n{body}\n")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------- validation


_crd_validators: dict[tuple[str, str, str], jsonschema.protocols.Validator] = {}


def crd_validator(api_version: str, kind: str, kube: str) -> jsonschema.protocols.Validator:
    key = (api_version, kind, kube)
    if key not in _crd_validators:
        schema = json.loads(CRD_SCHEMAS[(api_version, kind)].read_text())
        definitions = kv_utils.schema_contents(
            f"kubernetes-json-schema/v{kube}-local-strict/_definitions.json", kube
        )
        registry = Registry().with_resources(
            [
                (definitions["$id"], Resource.from_contents(definitions)),
                (schema["$id"], Resource.from_contents(schema)),
            ]
        )
        _crd_validators[key] = jsonschema.Draft202012Validator(schema, registry=registry)
    return _crd_validators[key]


def resolve_kube(version: str) -> str:
    """The schema directory kubernetes-validate uses for `version` (latest not newer than it)."""
    wanted = kv_utils.major_minor(version)
    candidates = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) <= wanted]
    return candidates[-1]


def validate_objects(where: str, objects: list[dict[str, Any]], failures: Failures) -> int:
    """kubernetes-validate --strict on every object, for every Kubernetes version checked."""
    checked = 0
    for obj in objects:
        name = f"{where} {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if not all(k in obj for k in ("apiVersion", "kind", "metadata")):
            failures.add(name, "missing apiVersion, kind or metadata")
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kv_utils.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                failures.add(name, f"Kubernetes {version}: {path}: {error.message}")
            except kv_utils.SchemaNotFoundError:
                key = (obj["apiVersion"], obj["kind"])
                if key not in CRD_SCHEMAS:
                    failures.add(name, f"Kubernetes {version} has no kind {obj['kind']} in {obj['apiVersion']}")
                    continue
                validator = crd_validator(*key, resolve_kube(version))
                for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
                    path = ".".join(str(p) for p in error.path)
                    failures.add(name, f"{CRD_SCHEMAS[key].name}: {path}: {error.message}")
            checked += 1
    return checked


def drain_window_seconds(container: dict[str, Any], configmaps: dict[str, dict[str, Any]]) -> float:
    """signalr.drain_window as the container would see it (hubcast's default: 10 s)."""
    value = None
    for source in container.get("envFrom", []):
        data = configmaps.get(source.get("configMapRef", {}).get("name"), {}).get("data", {})
        value = data.get("HUBCAST_SIGNALR__DRAIN_WINDOW", value)
    for env in container.get("env", []):
        if env["name"] == "HUBCAST_SIGNALR__DRAIN_WINDOW" and "value" in env:
            value = env["value"]
    if value is None:
        return 10
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"([0-9]+)\s*([a-z]+)", value)
    return sum(int(n) * units.get(unit, 0) for n, unit in parts)


def label_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_policies(where: str, objects: list[dict[str, Any]], keys: set[str], failures: Failures) -> None:
    """What the schemas cannot see: references between objects and hubcast's own rules."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, str]] = set()
    for obj in objects:
        kind, name = obj.get("kind", ""), obj.get("metadata", {}).get("name", "")
        if (kind, name) in seen:
            failures.add(where, f"two objects {kind}/{name}")
        seen.add((kind, name))
        by_kind.setdefault(kind, []).append(obj)
        if "namespace" in obj.get("metadata", {}):
            failures.add(f"{where} {kind}/{name}", "sets metadata.namespace; k8s/ must apply to any namespace")
    if by_kind.get("Secret"):
        failures.add(where, "renders a Secret: the chart must only reference existing Secrets")

    allowed_env = {env_name(k) for k in keys}
    secret_env = {env_name(k) for k in SECRET_KEYS}

    def check_env_name(place: str, name: str) -> None:
        if name.startswith("HUBCAST_") and name not in allowed_env:
            failures.add(place, f"{name} is not a hubcast setting (hubcast refuses to start on it)")

    configmaps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    for cm in configmaps.values():
        for name in cm.get("data", {}):
            place = f"{where} ConfigMap/{cm['metadata']['name']}"
            check_env_name(place, name)
            if name in secret_env:
                failures.add(place, f"{name} is a secret and must come from a Secret")

    deployments = by_kind.get("Deployment", [])
    pod_labels = {d["metadata"]["name"]: d["spec"]["template"]["metadata"].get("labels", {}) for d in deployments}
    for deployment in deployments:
        dname = deployment["metadata"]["name"]
        place = f"{where} Deployment/{dname}"
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        if not label_match(spec["selector"].get("matchLabels", {}), pod_labels[dname]):
            failures.add(place, "selector does not match the pod labels")
        if pod.get("enableServiceLinks") is not False:
            failures.add(place, "enableServiceLinks must be false (service links add unknown HUBCAST_* variables)")
        if pod.get("automountServiceAccountToken") is not False:
            failures.add(place, "automountServiceAccountToken must be false")
        if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
            failures.add(place, "pod securityContext.runAsNonRoot must be true")
        for container in pod.get("containers", []):
            cplace = f"{place} container {container['name']}"
            security = container.get("securityContext", {})
            if security.get("readOnlyRootFilesystem") is not True:
                failures.add(cplace, "readOnlyRootFilesystem must be true")
            if security.get("allowPrivilegeEscalation") is not False:
                failures.add(cplace, "allowPrivilegeEscalation must be false")
            if "ALL" not in security.get("capabilities", {}).get("drop", []):
                failures.add(cplace, "capabilities must drop ALL")
            resources = container.get("resources", {})
            if not resources.get("requests") or not resources.get("limits"):
                failures.add(cplace, "needs resource requests and limits")
            if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
                failures.add(cplace, "readinessProbe must be GET /readyz")
            if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                failures.add(cplace, "livenessProbe must be GET /healthz")
            if container.get("args", [None])[0] not in ("edge", "router"):
                failures.add(cplace, f"args {container.get('args')} run neither `hubcast edge` nor `hubcast router`")
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref and ref not in configmaps:
                    failures.add(cplace, f"envFrom ConfigMap {ref} is not rendered")
            for env in container.get("env", []):
                check_env_name(cplace, env["name"])
                if env["name"] in secret_env and "secretKeyRef" not in env.get("valueFrom", {}):
                    failures.add(cplace, f"{env['name']} must come from a secretKeyRef, never a literal value")
            if container["name"] == "edge":
                sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                grace = pod.get("terminationGracePeriodSeconds", 30)
                window = drain_window_seconds(container, configmaps)
                if sleep <= 0:
                    failures.add(cplace, "needs a preStop sleep so the ingress stops routing before the drain")
                if grace < sleep + window + 20:
                    failures.add(cplace, f"terminationGracePeriodSeconds {grace} < preStop {sleep} s + drain window "
                                         f"{window} s + 20 s of shutdown")

    services = by_kind.get("Service", [])
    for service in services:
        place = f"{where} Service/{service['metadata']['name']}"
        selector = service["spec"].get("selector", {})
        targets = [d for d, labels in pod_labels.items() if label_match(selector, labels)]
        if len(targets) != 1:
            failures.add(place, f"selects {len(targets)} Deployments' pods, not exactly one")
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for dname in targets:
                deployment = next(d for d in deployments if d["metadata"]["name"] == dname)
                ports = [p for c in deployment["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
                if not any(target in (p.get("name"), p.get("containerPort")) for p in ports):
                    failures.add(place, f"targetPort {target} is no container port of {dname}")

    for pdb in by_kind.get("PodDisruptionBudget", []):
        selector = pdb["spec"]["selector"].get("matchLabels", {})
        if not any(label_match(selector, labels) for labels in pod_labels.values()):
            failures.add(f"{where} PodDisruptionBudget/{pdb['metadata']['name']}", "selects no pods")
    for policy in by_kind.get("NetworkPolicy", []):
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        if not any(label_match(selector, labels) for labels in pod_labels.values()):
            failures.add(f"{where} NetworkPolicy/{policy['metadata']['name']}", "selects no pods")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        if target.get("kind") != "Deployment" or target.get("name") not in pod_labels:
            failures.add(f"{where} HorizontalPodAutoscaler/{hpa['metadata']['name']}", f"targets {target}, not rendered")
        else:
            scaled = next(d for d in deployments if d["metadata"]["name"] == target["name"])
            if "replicas" in scaled["spec"]:
                failures.add(f"{where} Deployment/{target['name']}", "sets replicas although an HPA scales it")
    service_ports = {s["metadata"]["name"]: s["spec"].get("ports", []) for s in services}
    for ingress in by_kind.get("Ingress", []):
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                port = backend["port"].get("name") or backend["port"].get("number")
                ports = service_ports.get(backend["name"])
                if ports is None or not any(port in (p.get("name"), p["port"]) for p in ports):
                    failures.add(f"{where} Ingress/{ingress['metadata']['name']}", f"backend {backend} is not rendered")
    for monitor in by_kind.get("ServiceMonitor", []):
        selector = monitor["spec"]["selector"].get("matchLabels", {})
        selected = [s for s in services if label_match(selector, s["metadata"].get("labels", {}))]
        if not selected:
            failures.add(f"{where} ServiceMonitor/{monitor['metadata']['name']}", "selects no Service")
        for endpoint in monitor["spec"]["endpoints"]:
            for service in selected:
                if not any(p.get("name") == endpoint.get("port") for p in service["spec"]["ports"]):
                    failures.add(
                        f"{where} ServiceMonitor/{monitor['metadata']['name']}",
                        f"port {endpoint.get('port')} is not a port of Service {service['metadata']['name']}",
                    )


# ------------------------------------------------------------------------------------- hubcast binary check


def hubcast_binary() -> Path | None:
    explicit = os.environ.get("HUBCAST_BIN")
    if explicit:
        return Path(explicit)
    for profile in ("release", "debug"):
        candidate = ROOT / "target" / profile / "hubcast"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def check_with_binary(binary: Path, where: str, objects: list[dict[str, Any]], failures: Failures) -> int:
    """Loads each pod's configuration with the real binary (`hubcast token` parses it, then mints)."""
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    dummy_secrets = {
        "HUBCAST_BUS__AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2f",
        "HUBCAST_AUTH__JWT_SECRET": "helm-check",
        "HUBCAST_AUTH__MASTER_KEY": "sha256:" + "0" * 64,
    }
    runs = 0
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = {"PATH": "/usr/bin:/bin"}
            for source in container.get("envFrom", []):
                env.update(configmaps.get(source.get("configMapRef", {}).get("name"), {}))
            for var in container.get("env", []):
                if "value" in var:
                    env[var["name"]] = str(var["value"])
                elif var["name"] in dummy_secrets:
                    env[var["name"]] = dummy_secrets[var["name"]]
            # `token` needs an HS256 secret to mint; a public key file of the pod does not exist here.
            env.pop("HUBCAST_AUTH__JWT_PUBLIC_KEY_FILE", None)
            env["HUBCAST_AUTH__JWT_SECRET"] = dummy_secrets["HUBCAST_AUTH__JWT_SECRET"]
            env["RUST_BACKTRACE"] = "0"
            result = subprocess.run(
                [str(binary), "token", "--vkey", "1"], env=env, capture_output=True, text=True, timeout=30
            )
            runs += 1
            if result.returncode != 0:
                failures.add(
                    f"{where} Deployment/{deployment['metadata']['name']}",
                    f"{binary.name} refuses the rendered configuration: {result.stderr.strip()[:600]}",
                )
    return runs


# -------------------------------------------------------------------------------------------------- driver


def step(title: str) -> float:
    print(f"\n== {title}")
    return time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite k8s/hubcast.yaml from the default render")
    args = parser.parse_args()
    failures = Failures()
    print(f"helm-python-sdk {helm.__version__} (Helm SDK {helm.helm_sdk_version()}), "
          f"kubernetes-validate {kv_version} (Kubernetes {', '.join(KUBE_VERSIONS)})")

    keys, keys_source = allowed_keys()
    print(f"hubcast settings: {len(keys)} keys from {keys_source}")

    scenarios: list[tuple[str, dict[str, Any] | None, str]] = [("default values", None, RELEASE)]
    production = CHART / "ci" / "production-values.yaml"
    scenarios.append((rel(production), load_yaml(production), RELEASE))
    for path in sorted((HERE / "values").glob("*.yaml")):
        scenarios.append((rel(path), load_yaml(path), "conduit-rt"))

    step("helm lint --strict")
    for label, values, _ in scenarios:
        for kube in ("v" + MIN_KUBE, "v" + KUBE_VERSIONS[-1]):
            report = helm.lint(str(CHART), values, strict=True, kube_version=kube)
            problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
            for message in problems:
                failures.add(f"lint ({label}, {kube})", f"{message.get('path')}: {message.get('error', '').strip()}")
            for error in report.get("errors", []):
                if not any(error.strip() in str(m.get("error", "")) for m in problems):
                    failures.add(f"lint ({label}, {kube})", error.strip())
            if not problems and not report.get("errors"):
                infos = "; ".join(m.get("error", "").strip() for m in report.get("messages", []))
                print(f"  ok   {label} ({kube})" + (f"  [info: {infos}]" if infos else ""))

    step(f"render and validate (kubernetes-validate --strict, Kubernetes {' and '.join(KUBE_VERSIONS)})")
    default_documents: list[tuple[str, str, dict[str, Any]]] | None = None
    rendered_objects: list[tuple[str, list[dict[str, Any]]]] = []
    for label, values, release in scenarios:
        try:
            rendered, notes = render(values, release)
        except helm.HelmError as error:
            failures.add(f"render ({label})", str(error).strip())
            continue
        documents = split_documents(rendered)
        objects = [obj for _, _, obj in documents]
        if values is None:
            default_documents = documents
        before = len(failures.items)
        count = validate_objects(label, objects, failures)
        check_policies(label, objects, keys, failures)
        if not notes.strip():
            failures.add(label, "NOTES.txt renders empty")
        rendered_objects.append((label, objects))
        kinds = ", ".join(sorted({o["kind"] for o in objects}))
        status = "ok  " if len(failures.items) == before else "FAIL"
        print(f"  {status} {label} (release {release}): {len(objects)} objects, {count} validations [{kinds}]")

    step("values the chart must refuse (tests/helm/invalid)")
    for path in sorted((HERE / "invalid").glob("*.yaml")):
        text = path.read_text()
        expect = re.search(r"^# expect: (.+)$", text, re.M)
        if not expect:
            failures.add(rel(path), "has no `# expect: <message part>` line")
            continue
        try:
            render(load_yaml(path))
        except helm.HelmError as error:
            if expect.group(1).strip() in str(error):
                print(f"  ok   {path.name}: refused ({expect.group(1).strip()})")
            else:
                failures.add(rel(path), f"refused, but not with '{expect.group(1).strip()}': {str(error).strip()}")
            continue
        failures.add(rel(path), "was accepted, but must be refused")

    step("k8s/ equals the default render")
    if default_documents is None:
        failures.add("k8s", "the default values do not render, so k8s/hubcast.yaml cannot be compared")
    else:
        expected = manifest_text(default_documents)
        if args.update:
            K8S_DIR.mkdir(exist_ok=True)
            K8S_FILE.write_text(expected)
            print(f"  wrote {rel(K8S_FILE)}")
        elif not K8S_FILE.exists():
            failures.add(rel(K8S_FILE), "is missing: run scripts/helm-check.sh --update")
        else:
            actual = K8S_FILE.read_text()
            if actual != expected:
                diff = list(difflib.unified_diff(
                    actual.splitlines(), expected.splitlines(), f"{rel(K8S_FILE)} (committed)",
                    f"{rel(K8S_FILE)} (chart's default render)", lineterm="", n=2))
                print("\n".join(diff[:80]) + ("\n  ..." if len(diff) > 80 else ""))
                failures.add(rel(K8S_FILE), "differs from the chart's default render: run scripts/helm-check.sh --update")
            else:
                print(f"  ok   {rel(K8S_FILE)} is the default render")
    for path in sorted(K8S_DIR.glob("*")) if K8S_DIR.exists() else []:
        if path.suffix in (".md",):
            continue
        if path != K8S_FILE:
            failures.add(rel(path), "is not generated from the chart: k8s/ holds the default render only")
        if path.suffix not in (".yaml", ".yml", ".json") or not path.is_file():
            continue
        try:
            objects = [o for o in yaml.safe_load_all(path.read_text()) if o]
        except yaml.YAMLError as error:
            failures.add(rel(path), f"is not valid YAML: {error}")
            continue
        before = len(failures.items)
        count = validate_objects(rel(path), objects, failures)
        check_policies(rel(path), objects, keys, failures)
        if len(failures.items) == before:
            print(f"  ok   {rel(path)} validates: {len(objects)} objects, {count} validations")

    step("hubcast loads every rendered configuration")
    binary = hubcast_binary()
    if binary is None:
        print("  skipped: no hubcast binary (set HUBCAST_BIN, or build target/debug/hubcast)")
    elif not binary.exists():
        failures.add("HUBCAST_BIN", f"{binary} does not exist")
    else:
        runs = 0
        before = len(failures.items)
        for label, objects in rendered_objects:
            runs += check_with_binary(binary, label, objects, failures)
        if len(failures.items) == before:
            print(f"  ok   {rel(binary) if binary.is_relative_to(ROOT) else binary}: {runs} pod configurations load")

    print()
    if failures.items:
        print(f"helm-check FAILED ({len(failures.items)} problems):")
        for item in failures.items:
            print(f"  - {item}")
        return 1
    print("helm-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
