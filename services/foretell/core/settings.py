"""The one settings object, read from FORETELL_* environment variables at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
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
    # gRPC handler threads, and the most RPCs in flight before RESOURCE_EXHAUSTED.
    max_workers: int = Field(default=16, ge=1)
    max_concurrent_rpcs: int = Field(default=256, ge=1)
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Seconds in-flight calls get to finish on SIGTERM.
    grace_seconds: float = Field(default=10.0, ge=0)
    # Import jobs run in this many background threads.
    import_workers: int = Field(default=2, ge=1)
    import_batch_rows: int = Field(default=5000, ge=1)
    # Largest streamed upload accepted by ImportData.
    max_upload_bytes: int = Field(default=10 * 1024**3, ge=1)
    # Bad rows reported before an import stops reading.
    max_reported_violations: int = Field(default=100, ge=1)
    # host:port of the other services; empty means this process (all-in-one).
    dataset_target: str = ""
    training_target: str = ""
    # Training jobs (solution versions, predictors) that run at once; the rest queue.
    training_workers: int = Field(default=2, ge=1)
    # Seconds a training job may run before it is stopped and marked FAILED.
    training_timeout_seconds: float = Field(default=6 * 3600, gt=0)

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'foretell.db'}")
        if self.artifact_dir is None:
            object.__setattr__(self, "artifact_dir", self.data_dir / "artifacts")
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
