"""k8s/ renders and is valid, without kubectl or a cluster.

A small renderer below supports exactly the kustomize features k8s/ uses (resources, namespace, images,
strategic-merge `patches` by kind and name) and refuses any other kustomization field or patch directive, so
a new feature in k8s/ fails here instead of rendering differently than under `kubectl kustomize`. Every rendered document is checked against the Kubernetes
OpenAPI schemas bundled with kubernetes-validate (offline), for the oldest cluster version we support and the
newest one the package ships, and then against the invariants the production path promises: gRPC probes,
non-root read-only containers, resources, a Service and a PodDisruptionBudget per Deployment, a namespaced
Role limited to Jobs and pods, and NetworkPolicies that let through exactly the calls Foretell makes.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from foretell.core.settings import Settings
from foretell.training.k8s_launcher import job_manifest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("base", "overlays/cpu", "overlays/gpu")
# The oldest Kubernetes we promise to run on, and the newest schemas the package bundles.
VERSIONS = ("1.30", latest_version())
NAMESPACE = "foretell"
SERVICES = ("dataset", "training", "recommendation", "forecast-query")
PORT = 50051

Doc = dict[str, Any]

# ---- the renderer ------------------------------------------------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
# Lists that a strategic merge patch merges by key instead of replacing (k8s OpenAPI patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}


def _load_all(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for name, value in patch.items():
            if name.startswith("$"):
                raise ValueError(f"patch directive {name} is not supported by this renderer")
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = strategic_merge(merged[name], value, name) if name in merged else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        merged_list = list(base)
        for item in patch:
            index = next((i for i, old in enumerate(merged_list) if old.get(merge_key) == item[merge_key]), None)
            if index is None:
                merged_list.append(item)
            else:
                merged_list[index] = strategic_merge(merged_list[index], item)
        return merged_list
    return copy.deepcopy(patch)


def pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def _split_image(image: str) -> tuple[str, str]:
    """(name, ':tag' or '@digest' or '')."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    head, _, tail = image.rpartition(":")
    return (head, ":" + tail) if head and "/" not in tail else (image, "")


def _set_images(docs: list[Doc], images: list[Doc]) -> None:
    for entry in images:
        assert set(entry) <= {"name", "newName", "newTag", "digest"}, entry
        for doc in docs:
            spec = pod_spec(doc)
            for container in (spec or {}).get("containers", []) + (spec or {}).get("initContainers", []):
                name, suffix = _split_image(container["image"])
                if name != entry["name"]:
                    continue
                if "digest" in entry:
                    suffix = "@" + entry["digest"]
                elif "newTag" in entry:
                    suffix = ":" + str(entry["newTag"])
                container["image"] = entry.get("newName", name) + suffix


def render(directory: Path) -> list[Doc]:
    """What `kubectl kustomize directory` prints, for the features k8s/ uses."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unsupported, f"{directory}: the test renderer does not support {sorted(unsupported)}"
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        docs += render(path) if path.is_dir() else _load_all(path)
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, f"only file patches are supported: {entry}"
        for patch in _load_all(directory / entry["path"]):
            matches = [
                i
                for i, doc in enumerate(docs)
                if doc["kind"] == patch["kind"] and doc["metadata"]["name"] == patch["metadata"]["name"]
            ]
            assert len(matches) == 1, f"patch {entry['path']} targets {len(matches)} resources"
            docs[matches[0]] = strategic_merge(docs[matches[0]], patch)
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    _set_images(docs, kustomization.get("images", []))
    return docs


RENDERED = {name: render(K8S / name) for name in OVERLAYS}


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    return doc


# ---- invariants (each returns the problems it found, so tests can show that they catch them) ----------

_QUANTITY = re.compile(r"^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_SCALE = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: str | int) -> float:
    match = _QUANTITY.match(str(value))
    assert match, f"unparsed quantity {value!r}"
    return float(match.group(1)) * _SCALE[match.group(2)]


def container_problems(doc: Doc) -> list[str]:
    """Security context, resources and (for Deployments) gRPC probes of every container of a workload."""
    where = f"{doc['kind']}/{doc['metadata']['name']}"
    spec = pod_spec(doc)
    assert spec is not None
    problems = []
    pod = spec.get("securityContext", {})
    if pod.get("runAsNonRoot") is not True or pod.get("runAsUser", 0) == 0:
        problems.append(f"{where}: pod must run as a non-root UID (runAsNonRoot, runAsUser)")
    if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: seccompProfile must be RuntimeDefault")
    scratch = {volume["name"] for volume in spec.get("volumes", []) if "emptyDir" in volume}
    for container in spec["containers"]:
        at = f"{where}/{container['name']}"
        context = container.get("securityContext", {})
        if context.get("readOnlyRootFilesystem") is not True or context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: needs readOnlyRootFilesystem and no privilege escalation")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{at}: must drop ALL capabilities")
        if not any(m["mountPath"] == "/tmp" and m["name"] in scratch for m in container.get("volumeMounts", [])):
            problems.append(f"{at}: /tmp must be an emptyDir (the root filesystem is read-only)")
        resources = container.get("resources", {})
        for resource in ("cpu", "memory"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            if request is None or limit is None:
                problems.append(f"{at}: needs a {resource} request and limit")
            elif quantity(request) > quantity(limit):
                problems.append(f"{at}: {resource} request {request} exceeds limit {limit}")
        if doc["kind"] != "Deployment":
            continue
        if not any(p.get("containerPort") == PORT and p.get("name") == "grpc" for p in container.get("ports", [])):
            problems.append(f"{at}: must expose the gRPC port {PORT} as `grpc`")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if container.get(probe, {}).get("grpc", {}).get("port") != PORT:
                problems.append(f"{at}: {probe} must be a native grpc probe on port {PORT}")
    return problems


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions) against a pod's labels; {} selects everything."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def companion_problems(docs: list[Doc]) -> list[str]:
    """Every Deployment: a Service and a PodDisruptionBudget that select its pods, an existing ServiceAccount."""
    problems = []
    accounts = {doc["metadata"]["name"] for doc in of_kind(docs, "ServiceAccount")}
    for deployment in of_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if not selects(deployment["spec"]["selector"], labels):
            problems.append(f"{name}: selector does not match its own pods")
        services = [
            s
            for s in of_kind(docs, "Service")
            if s["spec"].get("selector") and selects({"matchLabels": s["spec"]["selector"]}, labels)
        ]
        if not any(p["port"] == PORT and p.get("targetPort") == "grpc" for s in services for p in s["spec"]["ports"]):
            problems.append(f"{name}: no Service sends port {PORT} to its grpc port")
        if any(s["spec"].get("clusterIP") != "None" for s in services):
            problems.append(f"{name}: its Service must be headless (the server sets no max connection age)")
        if not any(selects(pdb["spec"]["selector"], labels) for pdb in of_kind(docs, "PodDisruptionBudget")):
            problems.append(f"{name}: no PodDisruptionBudget")
        if deployment["spec"]["template"]["spec"].get("serviceAccountName") not in accounts:
            problems.append(f"{name}: its ServiceAccount is not rendered")
    return problems


ALLOWED_RULES = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete", "deletecollection"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get", "list", "watch"},
}


def rbac_problems(docs: list[Doc]) -> list[str]:
    problems = [
        f"{doc['kind']}/{doc['metadata']['name']}: cluster-wide RBAC is not allowed"
        for doc in docs
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding")
    ]
    for role in of_kind(docs, "Role"):
        for rule in role["rules"]:
            if set(rule) - {"apiGroups", "resources", "verbs"}:
                problems.append(f"Role/{role['metadata']['name']}: only apiGroups/resources/verbs rules")
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    extra = set(rule.get("verbs", [])) - ALLOWED_RULES.get((group, resource), set())
                    if extra:
                        problems.append(f"Role/{role['metadata']['name']}: {sorted(extra)} on {group}/{resource}")
    for binding in of_kind(docs, "RoleBinding"):
        if binding["roleRef"]["kind"] != "Role":
            problems.append(f"RoleBinding/{binding['metadata']['name']}: must bind a Role")
        for subject in binding["subjects"]:
            if subject.get("namespace") != binding["metadata"].get("namespace"):
                problems.append(f"RoleBinding/{binding['metadata']['name']}: subject in another namespace")
    return problems


# ---- a NetworkPolicy evaluator, for the paths Foretell needs ---------------------------------------------


def _peer_matches(
    peer: Doc,
    policy_namespace: str,
    pod: tuple[str, dict[str, str]] | None,
    namespace_labels: dict[str, dict[str, str]],
) -> bool:
    if pod is None:  # outside the cluster: only ipBlock peers name it
        return "ipBlock" in peer
    namespace, labels = pod
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace_labels.get(namespace, {})):
            return False
    elif namespace != policy_namespace or "ipBlock" in peer:
        return False
    return selects(peer.get("podSelector", {}), labels)


def _rule_allows(
    rule: Doc,
    direction: str,
    policy_namespace: str,
    other: tuple[str, dict[str, str]] | None,
    port: int,
    namespace_labels: dict[str, dict[str, str]],
) -> bool:
    peers = rule.get("from" if direction == "Ingress" else "to")
    if peers is not None and not any(_peer_matches(p, policy_namespace, other, namespace_labels) for p in peers):
        return False
    ports = rule.get("ports")
    return ports is None or any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports)


def _side_allows(
    docs: list[Doc],
    pod: tuple[str, dict[str, str]],
    direction: str,
    other: tuple[str, dict[str, str]] | None,
    port: int,
    namespace_labels: dict[str, dict[str, str]],
) -> bool:
    namespace, labels = pod
    policies = [
        p
        for p in of_kind(docs, "NetworkPolicy")
        if p["metadata"].get("namespace") == namespace
        and direction in p["spec"].get("policyTypes", [])
        and selects(p["spec"]["podSelector"], labels)
    ]
    if not policies:
        return True  # not isolated in this direction
    rules = [r for p in policies for r in p["spec"].get(direction.lower(), [])]
    return any(_rule_allows(r, direction, namespace, other, port, namespace_labels) for r in rules)


CLIENT = ("clients", {"foretell.dev/client": "true"})
STRANGER = ("clients", {"app": "something-else"})
NAMESPACE_LABELS = {name: {"kubernetes.io/metadata.name": name} for name in (NAMESPACE, "clients", "kube-system")}


def pod_of(docs: list[Doc], name: str) -> tuple[str, dict[str, str]]:
    for doc in docs:
        if pod_spec(doc) is not None and doc["metadata"]["name"] == name:
            return doc["metadata"]["namespace"], doc["spec"]["template"]["metadata"]["labels"]
    raise KeyError(name)


# A worker Job's pod, labelled the way foretell.training.k8s_launcher labels it.
WORKER = (
    NAMESPACE,
    job_manifest(Settings(training_launcher="local"), NAMESPACE, "x", Path("/x"), "solution")["spec"]["template"][
        "metadata"
    ]["labels"],
)


def allowed(
    docs: list[Doc],
    source: tuple[str, dict[str, str]] | None,
    destination: tuple[str, dict[str, str]] | None,
    port: int,
) -> bool:
    """Whether the rendered NetworkPolicies let `source` open a TCP connection to `destination` (None: outside)."""
    ok = True
    if source is not None:
        ok = _side_allows(docs, source, "Egress", destination, port, NAMESPACE_LABELS)
    if destination is not None:
        ok = ok and _side_allows(docs, destination, "Ingress", source, port, NAMESPACE_LABELS)
    return ok


def network_problems(docs: list[Doc]) -> list[str]:
    problems = []
    deny = [
        p
        for p in of_kind(docs, "NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not deny:
        problems.append("no default-deny NetworkPolicy")
    pods = {name: pod_of(docs, name) for name in SERVICES}
    peers = {
        ("training", "dataset"),
        ("recommendation", "dataset"),
        ("recommendation", "training"),
        ("forecast-query", "dataset"),
        ("forecast-query", "training"),
    }
    for name, pod in pods.items():
        if not allowed(docs, CLIENT, pod, PORT):
            problems.append(f"clients cannot reach {name}")
        if allowed(docs, STRANGER, pod, PORT):
            problems.append(f"an unlabelled pod can reach {name}")
        if not allowed(docs, pod, None, 5432) or not allowed(docs, pod, None, 443):
            problems.append(f"{name} cannot reach PostgreSQL or the object store")
        for other, other_pod in pods.items():
            if other != name and allowed(docs, pod, other_pod, PORT) != ((name, other) in peers):
                problems.append(f"{name} -> {other}: expected {'open' if (name, other) in peers else 'closed'}")
    if not allowed(docs, WORKER, None, 443):
        problems.append("training workers cannot reach the object store")
    if allowed(docs, WORKER, pods["dataset"], PORT):
        problems.append("training workers should not call services")
    return problems


# ---- tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_document_is_valid_kubernetes(overlay: str, version: str) -> None:
    docs = RENDERED[overlay]
    assert len(docs) > 20
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_are_locked_down_and_probed(overlay: str) -> None:
    docs = RENDERED[overlay]
    assert sorted(d["metadata"]["name"] for d in of_kind(docs, "Deployment")) == sorted(SERVICES)
    assert [p for d in docs if pod_spec(d) is not None for p in container_problems(d)] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_schema_is_migrated_before_the_dataset_service_starts(overlay: str) -> None:
    (dataset,) = [d for d in of_kind(RENDERED[overlay], "Deployment") if d["metadata"]["name"] == "dataset"]
    spec = pod_spec(dataset)
    assert spec is not None
    (migrate,) = spec["initContainers"]
    assert migrate["command"] == ["foretell", "db", "upgrade"]
    assert migrate["image"] == spec["containers"][0]["image"] and migrate["envFrom"] == spec["containers"][0]["envFrom"]
    assert migrate["securityContext"]["readOnlyRootFilesystem"] and migrate["resources"]["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_service_pdb_and_account(overlay: str) -> None:
    assert companion_problems(RENDERED[overlay]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_namespaced_and_minimal(overlay: str) -> None:
    docs = RENDERED[overlay]
    assert rbac_problems(docs) == []
    binding = named(docs, "RoleBinding", "foretell-training-launcher")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "foretell-training", "namespace": NAMESPACE}]
    tokens = {
        d["metadata"]["name"]
        for d in of_kind(docs, "Deployment")
        if d["spec"]["template"]["spec"].get("automountServiceAccountToken") is not False
    }
    assert tokens == {"training"}, "only training talks to the Kubernetes API"


API_VERBS = {
    "create": "create",
    "read": "get",
    "list": "list",
    "watch": "watch",
    "delete": "delete",
    "delete_collection": "deletecollection",
}


def test_role_grants_every_call_the_launcher_makes() -> None:
    """Each `self._batch.<verb>_namespaced_job` / `self._core.<verb>_namespaced_pod` in the launcher is allowed."""
    source = (ROOT / "services" / "foretell" / "training" / "k8s_launcher.py").read_text()
    calls = set(
        re.findall(r"\.(create|read|list|watch|delete_collection|delete)_namespaced_(job|pod|pod_log)\(", source)
    )
    assert calls, "the launcher's API calls were not found"
    grants = {
        (resource, verb)
        for rule in named(RENDERED["base"], "Role", "foretell-training-launcher")["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    resources = {"job": "jobs", "pod": "pods", "pod_log": "pods/log"}
    missing = {(resources[kind], API_VERBS[verb]) for verb, kind in calls} - grants
    assert missing == set()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_what_foretell_needs(overlay: str) -> None:
    assert network_problems(RENDERED[overlay]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_is_in_the_namespace(overlay: str) -> None:
    assert {d["metadata"].get("namespace") for d in RENDERED[overlay]} == {NAMESPACE}


def service_settings(docs: list[Doc], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The training service's Settings, read from the rendered ConfigMaps the way the pod reads them."""
    for key in [key for key in os.environ if key.startswith("FORETELL_")]:
        monkeypatch.delenv(key)
    training = named(docs, "Deployment", "training")["spec"]["template"]["spec"]["containers"][0]
    for source in training["envFrom"]:
        if "configMapRef" in source:
            for key, value in named(docs, "ConfigMap", source["configMapRef"]["name"])["data"].items():
                monkeypatch.setenv(key, value)
    monkeypatch.setenv("FORETELL_DATABASE_URL", "postgresql+psycopg://foretell:x@postgres:5432/foretell")
    monkeypatch.setenv("FORETELL_K8S_NAMESPACE", NAMESPACE)
    return Settings()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_and_commands_exist_in_the_code(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = RENDERED[overlay]
    for configmap in of_kind(docs, "ConfigMap"):
        unknown = [
            key for key in configmap["data"] if key.removeprefix("FORETELL_").lower() not in Settings.model_fields
        ]
        assert unknown == [], f"{configmap['metadata']['name']}: keys foretell.core.settings.Settings does not read"
    service_settings(docs, monkeypatch)  # parses and passes Settings' own checks (e.g. the kubernetes launcher's)
    configmaps = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"] for d in of_kind(docs, "Secret")}
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    for doc in docs:
        spec = pod_spec(doc)
        for container in (spec or {}).get("containers", []):
            refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
            assert set(refs) <= configmaps
            secret_refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
            secret_refs += [
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            for secret in set(secret_refs) - secrets:
                assert f"create secret generic {secret}" in deploy_doc, f"docs/deploy.md must create {secret}"
            command = container.get("command", [])
            if command[:2] == ["python", "-m"]:
                assert importlib.util.find_spec(command[2]) is not None, command


def worker_job(settings: Settings) -> Doc:
    """The Job foretell.training.k8s_launcher writes for one training job under these settings."""
    job_dir = settings.artifacts / "jobs" / "operations-x"
    return job_manifest(settings, settings.k8s_namespace, "foretell-solution-x", job_dir, "solution")


def test_dev_overlay_is_one_small_replica_each(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = RENDERED["overlays/cpu"]
    assert all(d["spec"].get("replicas", 1) == 1 for d in of_kind(docs, "Deployment"))
    assert named(docs, "HorizontalPodAutoscaler", "recommendation")["spec"]["maxReplicas"] == 1
    image = named(docs, "Deployment", "training")["spec"]["template"]["spec"]["containers"][0]["image"]
    settings = service_settings(docs, monkeypatch)
    assert settings.training_launcher == "local"
    assert settings.k8s_image == image == "foretell:dev", "switching to Jobs must run the services' own image"


@pytest.mark.parametrize("version", VERSIONS)
def test_gpu_overlay_runs_valid_gpu_worker_jobs_on_the_shared_volume(
    version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = RENDERED["overlays/gpu"]
    settings = service_settings(docs, monkeypatch)
    assert settings.training_launcher == "kubernetes"
    training = named(docs, "Deployment", "training")["spec"]["template"]
    service_image = training["spec"]["containers"][0]["image"]
    assert _split_image(settings.k8s_image)[0] == _split_image(service_image)[0]
    assert settings.k8s_image != service_image, "workers run the CUDA build"

    job = worker_job(settings)
    kubernetes_validate.validate(job, version, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] and pod["tolerations"]
    assert named(docs, "ServiceAccount", pod["serviceAccountName"])["automountServiceAccountToken"] is False
    # Same claim at the same path as the services: the job spec names its files by absolute path.
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    # Locked down like the services (resources aside: a worker has no CPU limit on purpose).
    assert not [p for p in container_problems(job) if "resource" not in p and "request" not in p], job
    service_mounts = {
        m["mountPath"]: v["persistentVolumeClaim"]["claimName"]
        for m in training["spec"]["containers"][0]["volumeMounts"]
        for v in training["spec"]["volumes"]
        if v["name"] == m["name"] and "persistentVolumeClaim" in v
    }
    assert service_mounts == {mount["mountPath"]: volume["persistentVolumeClaim"]["claimName"]}
    assert named(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert pod["securityContext"]["runAsUser"] == training["spec"]["securityContext"]["runAsUser"]


@pytest.mark.parametrize("version", VERSIONS)
def test_sharded_forecasting_runs_as_a_valid_indexed_job(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = service_settings(RENDERED["overlays/gpu"], monkeypatch)
    job_dir = settings.artifacts / "jobs" / "operations-x"
    job = job_manifest(settings, settings.k8s_namespace, "foretell-predictor-x", job_dir, "predictor", shard_count=12)
    kubernetes_validate.validate(job, version, strict=True)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"]) == ("Indexed", 12)
    assert spec["parallelism"] == min(12, settings.k8s_max_parallel_shards)
    # What an Indexed Job's podFailurePolicy allows without backoffLimitPerIndex (FailIndex needs it), and the
    # restartPolicy any podFailurePolicy needs.
    assert {rule["action"] for rule in spec["podFailurePolicy"]["rules"]} <= {"FailJob", "Ignore", "Count"}
    assert "backoffLimitPerIndex" not in spec and "maxFailedIndexes" not in spec
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    # Every pod runs the same worker command: its shard is the JOB_COMPLETION_INDEX Kubernetes gives it.
    assert spec["template"]["spec"]["containers"] == worker_job(settings)["spec"]["template"]["spec"]["containers"]


# ---- the checks can fail ------------------------------------------------------------------------------


def _mutated(overlay: str) -> list[Doc]:
    return copy.deepcopy(RENDERED[overlay])


def test_checks_catch_broken_manifests() -> None:
    docs = _mutated("base")
    container = named(docs, "Deployment", "recommendation")["spec"]["template"]["spec"]["containers"][0]
    del container["readinessProbe"]["grpc"]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    del container["resources"]["limits"]["memory"]
    problems = "\n".join(container_problems(named(docs, "Deployment", "recommendation")))
    assert "readinessProbe" in problems and "readOnlyRootFilesystem" in problems and "memory" in problems

    docs = [d for d in _mutated("base") if (d["kind"], d["metadata"]["name"]) != ("PodDisruptionBudget", "dataset")]
    assert companion_problems(docs) == ["dataset: no PodDisruptionBudget"]

    docs = _mutated("base")
    named(docs, "Role", "foretell-training-launcher")["rules"].append(
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    )
    assert rbac_problems(docs) == ["Role/foretell-training-launcher: ['get'] on /secrets"]

    docs = [d for d in _mutated("base") if (d["kind"], d["metadata"]["name"]) != ("NetworkPolicy", "peers-to-training")]
    assert "recommendation -> training: expected open" in network_problems(docs)
    docs = [d for d in _mutated("base") if (d["kind"], d["metadata"]["name"]) != ("NetworkPolicy", "default-deny")]
    assert "no default-deny NetworkPolicy" in network_problems(docs)

    docs = _mutated("base")
    deployment = named(docs, "Deployment", "dataset")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    deployment["spec"]["replica"] = 1  # a typo strict validation must refuse
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def test_renderer_refuses_what_it_cannot_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(AssertionError, match="commonLabels"):
        render(tmp_path)
    assert strategic_merge(
        {"containers": [{"name": "a", "image": "x", "args": ["1"]}]},
        {"containers": [{"name": "a", "args": ["2"]}, {"name": "b"}]},
    ) == {"containers": [{"name": "a", "image": "x", "args": ["2"]}, {"name": "b"}]}
    assert _split_image("registry:5000/foretell:1.0") == ("registry:5000/foretell", ":1.0")
    assert _split_image("registry:5000/foretell") == ("registry:5000/foretell", "")


# ---- the image ------------------------------------------------------------------------------------------


def test_dockerfile_builds_a_small_non_root_image() -> None:
    dockerfile = (ROOT / "k8s" / "Dockerfile").read_text()
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    assert final.startswith("${PYTHON_IMAGE} AS runtime") and "slim" in dockerfile
    user = re.search(r"^USER (\d+)", final, re.MULTILINE)
    assert user and int(user.group(1)) != 0
    assert "COPY --from=build /opt/foretell /opt/foretell" in final
    assert not re.search(r"apt-get|build-essential|gcc", final)
    assert "ARG TORCH_INDEX" in dockerfile
    ignored = [
        line for line in (ROOT / "k8s" / "Dockerfile.dockerignore").read_text().splitlines() if line and line[0] != "#"
    ]
    assert ignored[0] == "*" and not any(
        line.startswith("!") and ("tests" in line or "bench" in line) for line in ignored
    )
