"""The one settings object, read from FORETELL_* environment variables at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ServiceName = Literal["dataset", "training", "recommendation", "forecast-query"]
ALL_SERVICES: tuple[ServiceName, ...] = ("dataset", "training", "recommendation", "forecast-query")


class Settings(BaseSettings):
    """Everything configurable, typed. `Settings()` fails fast on a bad value."""

    model_config = SettingsConfigDict(env_prefix="FORETELL_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    # 0 picks a free port (tests).
    port: int = Field(default=50051, ge=0, le=65535)
    # Holds the SQLite file and the artifact store unless they are set explicitly.
    data_dir: Path = Path("foretell-data")
    # SQLAlchemy URL; default sqlite:///{data_dir}/foretell.db. PostgreSQL:
    # postgresql+psycopg://user:pass@host/db
    database_url: str = ""
    artifact_dir: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    # gRPC handler threads for unary calls, and the most unary calls in flight before RESOURCE_EXHAUSTED.
    max_workers: int = Field(default=16, ge=1)
    max_concurrent_rpcs: int = Field(default=256, ge=1)
    # Streaming calls (event feeds, WatchEvents, ImportData uploads, Health.Watch) have threads and bounds of their
    # own, so however many are open, unary calls keep theirs: at most this many open at once (one thread each),
    # and at most max_streams_per_principal per API key (per connection for callers without one; the services'
    # internal key has no bound of its own: one feed per watched dataset group). Beyond: RESOURCE_EXHAUSTED.
    max_streams: int = Field(default=256, ge=1)
    max_streams_per_principal: int = Field(default=32, ge=1)
    # A client stream (an ImportData upload) that sends nothing for this long is ended with DEADLINE_EXCEEDED
    # and its spooled file removed.
    client_stream_idle_seconds: float = Field(default=60.0, gt=0)
    # Calls one client connection may have open at once (HTTP/2 MAX_CONCURRENT_STREAMS); its next calls wait in
    # the client until one ends. Twice the handler threads keeps them busy; a deeper queue inside the server
    # only made each call slower and, in gRPC's core, got calls dropped (docs/reliability.md).
    max_streams_per_connection: int = Field(default=32, ge=1)
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Seconds in-flight calls get to finish on SIGTERM.
    grace_seconds: float = Field(default=10.0, ge=0)
    # Prometheus /metrics over HTTP on this port (same host); unset: off, 0: a free port (docs/observability.md).
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Import jobs run in this many background threads.
    import_workers: int = Field(default=2, ge=1)
    # Imports waiting for one of those threads (each holds its spooled upload on disk); beyond this,
    # new imports get RESOURCE_EXHAUSTED.
    max_queued_imports: int = Field(default=32, ge=1)
    # Largest streamed upload accepted by ImportData.
    max_upload_bytes: int = Field(default=10 * 1024**3, ge=1)
    # Bad rows reported before an import stops reading.
    max_reported_violations: int = Field(default=100, ge=1)
    # Background work (imports, training jobs, deployments, batch jobs) is leased to the process that runs it for
    # this long, renewed every third of it: a dead replica's work is failed or resumed by another after about this.
    lease_seconds: float = Field(default=30.0, ge=1)
    # Every recommendation replica reconciles its loaded campaigns with the database this often (seconds): a
    # campaign created, updated or deleted on one replica is served so by all within this plus the model's load time.
    campaign_sync_seconds: float = Field(default=2.0, gt=0)
    # host:port of the other services; empty means this process (all-in-one).
    dataset_target: str = ""
    training_target: str = ""
    # Training jobs (solution versions, predictors) that run at once; the rest queue.
    training_workers: int = Field(default=2, ge=1)
    # Seconds a training job may run before it is stopped and marked FAILED.
    training_timeout_seconds: float = Field(default=6 * 3600, gt=0)
    # A predictor over more series than this, with per-series algorithms only (no DeepAR), is trained as
    # ceil(series / this) shards (at most forecast_max_shards) that run in parallel: local processes, or the
    # pods of one Indexed Job. 0 never splits.
    forecast_shard_series: int = Field(default=0, ge=0)
    forecast_max_shards: int = Field(default=16, ge=1)

    # ---- Where training workers run (foretell.training.k8s_launcher) ----
    # "local": processes on this machine; "kubernetes": one batch/v1 Job per training job.
    training_launcher: Literal["local", "kubernetes"] = "local"
    # Empty: this pod's namespace (from its service-account files), else "default".
    k8s_namespace: str = ""
    # The worker image (the service's own image); required with the kubernetes launcher.
    k8s_image: str = ""
    k8s_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # The workers' ServiceAccount; empty: "default".
    k8s_service_account: str = ""
    # ReadWriteMany claim holding the artifact directory, mounted at the same path in the service and the
    # workers (spec.json names paths absolutely); the mount path defaults to the artifact directory.
    k8s_artifacts_pvc: str = ""
    k8s_artifacts_mount_path: Path | None = None
    # nvidia.com/gpu per worker; 0 runs on CPU.
    k8s_gpus: int = Field(default=0, ge=0)
    # JSON in the environment, e.g. '{"cloud.google.com/gke-accelerator": "nvidia-l4"}' and
    # '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]' (the default with GPUs).
    k8s_node_selector: dict[str, str] = Field(default_factory=dict)
    k8s_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    # Quantities; an empty one is left unset (no CPU limit by default: throttling slows training for nothing).
    k8s_cpu_request: str = "1"
    k8s_memory_request: str = "2Gi"
    k8s_cpu_limit: str = ""
    k8s_memory_limit: str = "8Gi"
    # Finished Jobs (and their pods' logs) are kept this long.
    k8s_ttl_seconds: int = Field(default=24 * 3600, ge=0)
    # Non-root uid/gid the worker runs as (and owns files on the shared volume with).
    k8s_run_as_user: int = Field(default=10001, ge=1)
    # Pods of one sharded (Indexed) Job that run at once.
    k8s_max_parallel_shards: int = Field(default=8, ge=1)

    # ---- Where artifacts live (foretell.core.artifact_store) ----
    # S3-compatible store for s3:// artifact URIs (MinIO, Ceph, AWS). Empty: boto3's defaults
    # (AWS_ENDPOINT_URL, AWS_REGION). Credentials only through boto3's chain (AWS_* env, web identity).
    s3_endpoint_url: str = ""
    s3_region: str = ""
    # Where finished artifacts (models, predictors, forecasts, exports) are published and read:
    # s3://bucket/prefix, or empty for artifact_dir. Training jobs still work in artifact_dir (their
    # snapshots, job files and unfinished outputs); serving pods then need no shared volume.
    artifact_uri: str = ""
    # Local copies of s3:// artifacts (artifact_dir/cache) are evicted, least recently used first, above this.
    artifact_cache_bytes: int = Field(default=20 * 1024**3, ge=0)

    # ---- Security (foretell.core.tls, foretell.core.auth; docs/security.md) ----
    # PEM certificate chain and key: the port serves TLS. With a client CA too, clients must present a
    # certificate signed by it (mutual TLS). Peer channels then use TLS, trusting tls_ca_file (empty: the
    # system roots) and, under mutual TLS, presenting tls_cert_file as their client certificate.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tls_ca_file: Path | None = None
    # JSON file of API keys / bearer tokens and the dataset groups each may use; unset: no authentication.
    api_keys_file: Path | None = None
    # The key services send each other on peer channels (allowed everything). Empty: a random key per
    # process, which is enough for the all-in-one server; services in separate processes must share one.
    internal_api_key: SecretStr = SecretStr("")
    # AIP-155: how long the answer to a call with a request_id is kept (retries within it get that answer,
    # after it the id is free again); older answers are deleted as calls come in (core/idempotency.py).
    request_id_retention_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    # Where caller URIs may point (foretell.core.file_roots; docs/security.md): directories and/or
    # s3://bucket/prefix, as a JSON list in the environment ('["/srv/foretell/in", "s3://b/in"]'). With
    # authentication on each principal gets ROOT/<principal>; off, the root itself. Empty: [data_dir/files].
    import_roots: list[str] = Field(default_factory=list)
    export_roots: list[str] = Field(default_factory=list)

    @field_validator("import_roots", "export_roots", mode="before")
    @classmethod
    def _roots_as_text(cls, value: Any) -> Any:
        # Tests and callers pass Paths; the environment passes a JSON list of strings.
        return [str(v) for v in value] if isinstance(value, list | tuple) else value

    @model_validator(mode="after")
    def _check_roots(self) -> Settings:
        for root in (*self.import_roots, *self.export_roots):
            if root.startswith("s3://"):
                continue
            if "://" in root:
                raise ValueError(f"file roots are directories or s3://bucket/prefix URIs, not {root!r}")
            real = Path(root).resolve()
            if real == Path("/") or any(real.is_relative_to(p) for p in ("/proc", "/sys", "/dev")):
                raise ValueError(f"{root!r} cannot be a file root")
        return self

    @model_validator(mode="after")
    def _check_kubernetes(self) -> Settings:
        if self.training_launcher != "kubernetes":
            return self
        if not self.k8s_image or not self.k8s_artifacts_pvc:
            raise ValueError("the kubernetes training launcher needs k8s_image and k8s_artifacts_pvc")
        artifacts = self.artifact_dir or self.data_dir / "artifacts"
        mount = self.k8s_artifacts_mount_path or artifacts
        if not artifacts.is_absolute() or not artifacts.is_relative_to(mount):
            raise ValueError(
                "the kubernetes training launcher needs an absolute artifact_dir under k8s_artifacts_mount_path"
            )
        return self

    @model_validator(mode="after")
    def _check_artifact_uri(self) -> Settings:
        if self.artifact_uri and not self.artifact_uri.startswith("s3://"):
            raise ValueError("artifact_uri must be an s3://bucket/prefix URI (leave it empty for artifact_dir)")
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_cert_file is None and (self.tls_client_ca_file or self.tls_ca_file):
            raise ValueError("tls_client_ca_file and tls_ca_file need tls_cert_file and tls_key_file")
        return self

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'foretell.db'}")
        if self.artifact_dir is None:
            object.__setattr__(self, "artifact_dir", self.data_dir / "artifacts")
        for roots in ("import_roots", "export_roots"):
            if not getattr(self, roots):
                object.__setattr__(self, roots, [str(self.data_dir / "files")])
        return self

    @property
    def artifacts(self) -> Path:
        assert self.artifact_dir is not None
        return self.artifact_dir


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (plus overrides), or SystemExit with a readable message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"FORETELL_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"invalid settings: {problems}") from None
