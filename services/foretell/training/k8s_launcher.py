"""Training workers as Kubernetes Jobs: `FORETELL_TRAINING_LAUNCHER=kubernetes`.

Each job becomes one batch/v1 Job in the service's namespace. Its single pod runs the service's
own image with the same worker command as `LocalLauncher`: `python -m foretell.training.worker JOB_DIR`.

The worker and the training service talk only through files in JOB_DIR (spec.json in,
progress.jsonl and result.json out), and spec.json names the snapshot and artifact directories by
absolute path. So the artifact directory lives on a ReadWriteMany PersistentVolumeClaim
(`FORETELL_K8S_ARTIFACTS_PVC`) mounted at the same path (`FORETELL_K8S_ARTIFACTS_MOUNT_PATH`, by
default the artifact directory itself) in the training service's pod and in every worker pod.

Failure handling, decided here:
- `backoffLimit: 0`: re-running a failed job is the user's (or the training service's) decision.
- `podFailurePolicy`: exit code 1 (the worker wrote result.json with its error) or 2 (usage) ends the
  Job at once (FailJob); a pod with the `DisruptionTarget` condition (drained node, preemption,
  API eviction, node-pressure eviction) is Ignored, i.e. not counted against backoffLimit, so the
  Job controller starts a fresh pod that trains again from spec.json (the worker's outputs are
  written last, by rename, so a killed attempt leaves nothing that looks finished).
  `podReplacementPolicy: Failed` keeps two pods from ever working on the same JOB_DIR at once.
  `activeDeadlineSeconds` (the training timeout) bounds the retries.
- A Job deleted behind our back, a pod evicted without a retry, or a pod that vanished is reported
  as not running with a `reason`, which the jobs layer turns into FAILED with that message.

The pod keeps its log in the cluster (`kubectl logs job/NAME`); `FallbackToLogsOnError` puts its
tail in the container's termination message, which the failure reason quotes.

Handle: `k8s:{namespace}/{job-name}`; after a restart, `recover()` re-attaches by reading that Job.
RBAC the service account of the training service needs in its namespace: jobs (create, get,
delete, deletecollection) and pods (list).

Sharded jobs (`foretell.training.shards`: a large predictor of per-series algorithms split by
series) become one Indexed Job: `completions` = shards, `parallelism` = at most
`FORETELL_K8S_MAX_PARALLEL_SHARDS`, and pod i runs the same command with the JOB_COMPLETION_INDEX=i
that Kubernetes sets. The failure policy above applies to the Job as a whole, on purpose: a
predictor is not made without every shard, so one failed shard (exit 1, or any pod failure once
backoffLimit 0 is spent) fails the Job and its other pods are stopped; no backoffLimitPerIndex or
maxFailedIndexes. Disrupted pods are still Ignored and their index runs again. `status` names the
shard that failed (from the FailJob condition's pod, else the first index whose pod failed) and
how many had succeeded; the training service merges the shards once the Job is Complete.

Of the issue's launcher requirements ("Production path", part 3) this meets: one Job per training
job on the same image and command, shared RWX volume, backoff/deadline/TTL/pod failure policy,
labels, resources, GPU limit with node selector and tolerations, non-root security context,
service account, minimal env, status from the Job and its pod (exit code, eviction, deletion),
stop by background deletion, re-attach after restart, and Indexed Jobs that split large
forecasting runs across pods, and multi-GPU training: with FORETELL_K8S_GPUS > 1 a sequence solution or a
DeepAR predictor runs under torchrun, one DistributedDataParallel rank per GPU (`worker.worker_command`).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from foretell.core.settings import Settings
from foretell.training import shards
from foretell.training.launcher import WorkerStatus
from foretell.training.worker import job_processes, worker_command

log = logging.getLogger("foretell.training.k8s")

HANDLE_PREFIX = "k8s:"
CONTAINER = "worker"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# The toleration GPU node pools commonly carry (GKE, the NVIDIA GPU operator); added when none are set.
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# Worker exit codes that are the job's own verdict, never worth another pod: see worker.py.
FINAL_EXIT_CODES = [1, 2]
# The API server's answers that say "try again later": status() keeps the job running through them.
_TRANSIENT = {429, 500, 502, 503, 504}
_TERMINATION_MESSAGE_CHARS = 1500
TMP_SIZE_LIMIT = "8Gi"
# The annotation (and, from 1.28, label) with which the Job controller gives each pod of an Indexed Job its index.
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def default_namespace() -> str:
    """The pod's own namespace when running in a cluster, else "default"."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def job_name(job_dir: Path) -> str:
    """A DNS-1123 name ≤ 63 characters (the job-name pod label's limit); the suffix keeps a
    restarted job's new Job from colliding with the old one while that one is being deleted."""
    stem = "".join(c if c.isalnum() else "-" for c in job_dir.name.lower()).strip("-")[:40]
    return f"foretell-{stem}-{uuid.uuid4().hex[:6]}"


def job_manifest(
    settings: Settings,
    namespace: str,
    name: str,
    job_dir: Path,
    kind: str,
    shard_count: int = 1,
    processes: int = 1,
) -> dict[str, Any]:
    """The batch/v1 Job that runs the worker for `job_dir`, as the API server takes it; with `shard_count` > 1
    an Indexed Job of that many completions (pod i runs shard i: Kubernetes sets JOB_COMPLETION_INDEX); with
    `processes` > 1 its pod runs torchrun with one DDP rank per GPU."""
    labels = {
        "app.kubernetes.io/name": "foretell",
        "app.kubernetes.io/component": "training-worker",
        "app.kubernetes.io/managed-by": "foretell-training",
        "foretell.dev/operation": job_dir.name,
        "foretell.dev/kind": kind,
    }
    resources: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    for bucket, key, value in (
        ("requests", "cpu", settings.k8s_cpu_request),
        ("requests", "memory", settings.k8s_memory_request),
        ("limits", "cpu", settings.k8s_cpu_limit),
        ("limits", "memory", settings.k8s_memory_limit),
    ):
        if value:
            resources[bucket][key] = value
    node_selector = dict(settings.k8s_node_selector)
    tolerations = [dict(t) for t in settings.k8s_tolerations]
    if settings.k8s_gpus > 0:
        resources["limits"]["nvidia.com/gpu"] = str(settings.k8s_gpus)
        if not tolerations:
            tolerations = [dict(GPU_TOLERATION)]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # podFailurePolicy requires it; retries are Job-level
        "serviceAccountName": settings.k8s_service_account or "default",
        # The worker reads files only; it never calls the API server.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.k8s_run_as_user,
            "runAsGroup": settings.k8s_run_as_user,
            "fsGroup": settings.k8s_run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": settings.k8s_image,
                "imagePullPolicy": settings.k8s_image_pull_policy,
                "command": worker_command(job_dir, processes, python="python"),
                # Only what the worker reads: it takes everything else from spec.json. HOME because
                # an arbitrary uid has none, and numba/torch write caches there.
                "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "HOME", "value": "/tmp"}],
                "resources": {k: v for k, v in resources.items() if v},
                "terminationMessagePolicy": "FallbackToLogsOnError",
                # Locked down like the services: the worker writes only to the shared volume and /tmp.
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "artifacts", "mountPath": str(mount_path(settings))},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {"name": "artifacts", "persistentVolumeClaim": {"claimName": settings.k8s_artifacts_pvc}},
            # HOME is /tmp: torch, numba and torchrun write caches and rendezvous files there.
            {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
        ],
    }
    if processes > 1:
        # NCCL moves tensors between the ranks through /dev/shm; a container's default 64 MiB is too small.
        pod_spec["volumes"].append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        pod_spec["containers"][0]["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    spec: dict[str, Any] = {}
    if shard_count > 1:
        # One failed shard fails the Job (backoffLimit 0 and FailJob count for the Job as a whole, not per
        # index): the predictor cannot be made without it, so its other pods are stopped at once.
        spec = {
            "completionMode": "Indexed",
            "completions": shard_count,
            "parallelism": min(shard_count, settings.k8s_max_parallel_shards),
        }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            **spec,
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, int(settings.training_timeout_seconds)),
            "ttlSecondsAfterFinished": settings.k8s_ttl_seconds,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {
                # The first matching rule wins: a disruption is checked first, because torchrun answers the
                # SIGTERM of an eviction with exit code 1, which would otherwise fail the Job.
                "rules": [
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": FINAL_EXIT_CODES},
                    },
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def mount_path(settings: Settings) -> Path:
    return settings.k8s_artifacts_mount_path or settings.artifacts


class KubernetesLauncher:
    """A `Launcher` whose workers are batch/v1 Jobs (see the module docstring)."""

    def __init__(self, settings: Settings, api_client: k8s.ApiClient | None = None, namespace: str = "") -> None:
        self._settings = settings
        self._namespace = namespace or settings.k8s_namespace or default_namespace()
        api = api_client or _api_client()
        self._batch = k8s.BatchV1Api(api)
        self._core = k8s.CoreV1Api(api)

    @property
    def namespace(self) -> str:
        return self._namespace

    def start(self, job_dir: Path) -> str:
        job_dir = job_dir.absolute()
        if not job_dir.is_relative_to(mount_path(self._settings)):
            raise ValueError(f"{job_dir} is not on the shared volume mounted at {mount_path(self._settings)}")
        kind = _spec_kind(job_dir)
        n = shards.count_of(job_dir)
        # A Job left by a start whose handle was never recorded (the service died in between) would
        # write into this JOB_DIR too: remove it first.
        self._batch.delete_collection_namespaced_job(
            self._namespace,
            label_selector=f"foretell.dev/operation={job_dir.name}",
            propagation_policy="Background",
        )
        name = job_name(job_dir)
        # Several GPUs train one DDP job (sharded predictors are statistical: one process per pod).
        processes = job_processes(job_dir, self._settings.k8s_gpus) if n == 1 else 1
        manifest = job_manifest(self._settings, self._namespace, name, job_dir, kind, n, processes)
        # The manifest goes as a plain dict: the client serializes it as is (V1Job.from_dict is kubernetes>=37 only).
        self._batch.create_namespaced_job(self._namespace, manifest)
        log.info("started training worker job", extra={"job": f"{self._namespace}/{name}", "job_dir": str(job_dir)})
        return f"{HANDLE_PREFIX}{self._namespace}/{name}"

    def status(self, handle: str, job_dir: Path) -> WorkerStatus:
        if not handle.startswith(HANDLE_PREFIX):
            return WorkerStatus(running=False, reason=f"was started by another launcher ({handle}) and is not followed")
        namespace, name = _parse(handle)
        try:
            job = self._batch.read_namespaced_job(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return WorkerStatus(
                    running=False, reason=f"was lost: its Kubernetes Job {namespace}/{name} was deleted"
                )
            return _unreadable(handle, exc)
        except urllib3.exceptions.HTTPError as exc:
            return _unreadable(handle, exc)
        present = (job.status.conditions if job.status else None) or []
        conditions = {c.type: c for c in present if c.status == "True"}
        # SuccessCriteriaMet (1.31+) comes first, while the last pods still terminate; Complete once they are gone.
        if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
            return WorkerStatus(running=False, exit_code=0)
        # FailureTarget comes first, while the pod is still terminating; Failed once it is gone.
        failed = conditions.get("Failed") or conditions.get("FailureTarget")
        if failed is None:
            return WorkerStatus(running=True)
        if failed.reason == "DeadlineExceeded":
            deadline = job.spec.active_deadline_seconds if job.spec else None
            return WorkerStatus(
                running=False, reason=f"ran past the Job's activeDeadlineSeconds ({deadline} s) and was stopped"
            )
        try:
            pods = self._core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            return _unreadable(handle, exc)
        why = f"{failed.reason}: {failed.message}"
        completions = (job.spec.completions if job.spec else None) or 1
        if job.spec is None or job.spec.completion_mode != "Indexed" or completions <= 1:
            return _pod_outcome(pods, f"{namespace}/{name}", why)
        return _shard_outcome(job, pods, f"{namespace}/{name}", why, failed.message or "", completions)

    def stop(self, handle: str) -> None:
        if not handle.startswith(HANDLE_PREFIX):
            return
        namespace, name = _parse(handle)
        try:
            # Background: return at once; the garbage collector stops the pod (SIGTERM, then its grace period).
            self._batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


def _api_client() -> k8s.ApiClient:
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()  # a developer's kubeconfig, outside a cluster
    return k8s.ApiClient()


def _parse(handle: str) -> tuple[str, str]:
    namespace, _, name = handle.removeprefix(HANDLE_PREFIX).partition("/")
    return namespace, name


def _spec_kind(job_dir: Path) -> str:
    try:
        return str(json.loads((job_dir / "spec.json").read_text()).get("kind", "unknown"))
    except (OSError, ValueError):
        return "unknown"


def _unreadable(handle: str, exc: Exception) -> WorkerStatus:
    """A transient API error must not fail a job that may have hours left: report it running (the
    jobs layer's own timeout still bounds it). Anything else (RBAC, a bad request) is a bug to surface."""
    if isinstance(exc, ApiException) and exc.status not in _TRANSIENT:
        raise exc
    log.warning("cannot read training worker job; retrying", extra={"handle": handle, "error": str(exc)[:200]})
    return WorkerStatus(running=True)


def _shard_outcome(
    job: k8s.V1Job, pods: list[k8s.V1Pod], where: str, why: str, message: str, completions: int
) -> WorkerStatus:
    """Exit code and reason of a failed Indexed Job, from the pod of the shard that failed it: the pod a
    FailJob rule names in the Job's condition, else, of the newest attempt of each index, the one that
    failed first (the Job controller stops the other pods after it, and they fail later)."""
    status = job.status or k8s.V1JobStatus()
    done = f"{status.succeeded or 0} of {completions} shards had succeeded"
    newest: dict[int, k8s.V1Pod] = {}
    for pod in sorted(pods, key=_created):
        index = _completion_index(pod)
        if index is not None:
            newest[index] = pod
    named = _FAILJOB_POD.search(message)
    chosen = [p for p in pods if named and p.metadata and p.metadata.name == named.group(1)]
    if not chosen:
        chosen = sorted((p for p in newest.values() if _failed_at(p)), key=_failed_at)[:1]
    if not chosen:
        return WorkerStatus(
            running=False, reason=f"is gone: Kubernetes Job {where} failed ({why}; {done}) and no failed pod is left"
        )
    index = _completion_index(chosen[0])
    outcome = _pod_outcome(chosen, where, why)
    return WorkerStatus(
        running=False,
        exit_code=outcome.exit_code,
        reason=f"of shard {index} of {completions} ({done}) {outcome.reason}",
        shard=index,
    )


# "Container worker for pod ns/name failed with exit code 1 matching FailJob rule at index 0"
_FAILJOB_POD = re.compile(r"for pod [^/\s]+/(\S+) failed")


def _created(pod: k8s.V1Pod) -> str:
    return str(pod.metadata.creation_timestamp) if pod.metadata else ""


def _completion_index(pod: k8s.V1Pod) -> int | None:
    annotations = (pod.metadata.annotations if pod.metadata else None) or {}
    value = annotations.get(COMPLETION_INDEX, "")
    return int(value) if value.isdigit() else None


def _failed_at(pod: k8s.V1Pod) -> str:
    """When the pod's worker ended with a nonzero exit code, or "" (it did not)."""
    for container in (pod.status.container_statuses if pod.status else None) or []:
        terminated = container.state.terminated if container.name == CONTAINER and container.state else None
        if terminated is not None and terminated.exit_code != 0:
            return str(terminated.finished_at)
    return ""


def _pod_outcome(pods: list[k8s.V1Pod], job: str, why: str) -> WorkerStatus:
    """Exit code and reason of a failed Job, from its newest pod."""
    if not pods:
        return WorkerStatus(
            running=False, reason=f"is gone: Kubernetes Job {job} failed ({why}) and its pod was deleted"
        )
    pod = max(pods, key=_created)
    status = pod.status or k8s.V1PodStatus()
    where = f"pod {pod.metadata.name if pod.metadata else '?'}" + (
        f" on node {pod.spec.node_name}" if pod.spec and pod.spec.node_name else ""
    )
    if status.reason == "Evicted":
        return WorkerStatus(running=False, reason=f"was evicted ({where}): {status.message or 'no message'}")
    for condition in status.conditions or []:
        if condition.type == "DisruptionTarget" and condition.status == "True":
            return WorkerStatus(
                running=False, reason=f"was disrupted ({where}): {condition.reason}: {condition.message}"
            )
    for container in status.container_statuses or []:
        terminated = container.state.terminated if container.name == CONTAINER and container.state else None
        if terminated is None:
            continue
        code = terminated.exit_code
        how = f"exited with code {code}"
        if terminated.reason and terminated.reason not in ("Error", "Completed"):
            how += f" ({terminated.reason})"
        if terminated.message:
            how += ": " + " | ".join(terminated.message.strip().splitlines())[-_TERMINATION_MESSAGE_CHARS:]
        return WorkerStatus(running=False, exit_code=code, reason=how)
    return WorkerStatus(running=False, reason=f"ended without an exit code ({where}; Job {job} failed: {why})")
