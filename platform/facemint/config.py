"""Service settings: one pydantic-settings object, read from FACEMINT_* environment variables."""

from __future__ import annotations

import json
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from facemint.storage_crypto import Keyring

DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789abcdef"
DEV_API_KEY_PEPPER = "dev-only-api-key-pepper-change-me-0123456789"


class Environment(StrEnum):
    dev = "dev"
    prod = "prod"


DEFAULT_PLAN_LIMITS: dict[str, dict[str, str]] = {
    # Per plan: requests per API key (or JWT subject) and per tenant, in `limits` notation.
    "free": {"key": "60/minute", "tenant": "300/minute"},
    "pro": {"key": "600/minute", "tenant": "3000/minute"},
    "enterprise": {"key": "6000/minute", "tenant": "30000/minute"},
    # Platform staff (no tenant) are limited per principal only.
    "platform": {"key": "6000/minute", "tenant": "60000/minute"},
}


DEFAULT_PLAN_MAX_ACTIVE_JOBS: dict[str, int] = {"free": 20, "pro": 200, "enterprise": 2000}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACEMINT_", extra="ignore")

    # Secure by default: prod whenever a database is configured. dev (the built-in secrets, open /docs and
    # /metrics) only when said so, or on the embedded servers (no database URL: `facemint up`, the CLI on the
    # local data dir), see `_default_env`.
    env: Environment = Environment.prod
    database_url: str | None = None
    # Migrations run as the schema's owner; the service connects as `database_url`, a role that may read and
    # write rows but not alter tables, disable triggers or change journal rows (see facemint.migrate).
    database_owner_url: str | None = None
    database_app_role: str = Field(default="facemint_app", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # Database connections one API process opens at most, each kept once opened: a connection opened for a burst and
    # closed after it (SQLAlchemy's overflow) cost Postgres ~10 ms of CPU, more than ten submits' worth.
    database_pool_size: int = Field(default=30, ge=1, le=500)
    redis_url: str | None = None
    data_dir: Path = Path(".facemint")
    # "json": one object per line with the request's or job's ids (facemint.log_setup); "text" for a terminal.
    log_format: Literal["text", "json"] = "text"
    # OpenTelemetry traces (facemint.tracing), off by default. Exported over OTLP/HTTP to `otlp_endpoint`
    # (the collector's base URL; /v1/traces is added), else to the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT.
    # A trace is kept with probability `otel_sample_ratio`, decided where it starts (the API, or the caller's
    # traceparent) and followed by the worker.
    otel_enabled: bool = False
    otlp_endpoint: str | None = None
    otel_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    # JWT: HS256 pinned. `jwt_previous_keys` ({"kid": "secret"}) keeps tokens signed by a retired key valid.
    jwt_secret: SecretStr | None = None
    jwt_kid: str = "k1"
    jwt_previous_keys: dict[str, SecretStr] = Field(default_factory=dict)
    jwt_issuer: str = "facemint"
    jwt_audience: str = "facemint-api"
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=86400)

    # HMAC pepper for API-key hashes: a database dump alone cannot confirm a guessed key.
    api_key_pepper: SecretStr | None = None

    recharge_max_amount: int = Field(default=10_000_000, ge=1)
    batch_max_rows: int = Field(default=100_000, ge=1)
    batch_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)

    # Four-eyes approval: a recharge (one, or one batch row) above `approval_threshold_amount`, or a batch whose
    # total is above `approval_threshold_batch_total`, waits for a second operator; unapproved, it expires. A
    # pool-funded grant is weighed as a batch of one period; a platform-funded one always waits.
    approval_threshold_amount: int = Field(default=100_000, ge=1)
    approval_threshold_batch_total: int = Field(default=1_000_000, ge=1)
    approval_ttl_seconds: int = Field(default=86400, ge=60)
    # What one requester may move without review in any 24 hours (recharges, batches, adjustments and reversals
    # applied directly, summed); beyond it, further ones wait for approval too, so splitting one large amount
    # into many small ones does not skip review.
    approval_threshold_daily_total: int = Field(default=1_000_000, ge=1)

    # Sealed books: the sealer hashes finished ledger entries and audit events in batches of at most this many rows.
    seal_batch_max_rows: int = Field(default=50_000, ge=1)
    seal_interval_seconds: float = Field(default=10.0, gt=0, le=3600)

    plan_limits: dict[str, dict[str, str]] = Field(default_factory=lambda: dict(DEFAULT_PLAN_LIMITS))
    login_limit_per_ip: str = "20/minute"
    # Failed sign-ins only: a successful one never counts against its account.
    login_limit_per_account: str = "10/minute"
    # Failed authentications per address (IPv6 per /64); a valid credential is never refused because of them.
    anonymous_limit_per_ip: str = "120/minute"
    trusted_proxies: list[str] = Field(default_factory=list)
    # Every request body is limited while it streams: uploads and batches by their own settings
    # (`max_image_bytes`, `batch_max_bytes`), every other route by this.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    # The engine: model directory (default: <data dir>/models) and ONNX Runtime provider (auto|cuda|tensorrt|cpu).
    models_dir: Path | None = None
    engine_provider: Literal["auto", "cuda", "tensorrt", "cpu"] = "auto"
    engine_det_size: int = Field(default=640, ge=128, le=1280, multiple_of=32)
    max_image_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=10_000)
    # Video targets (MP4, MOV, WebM, MKV): streamed to a file as they upload, refused past `max_video_bytes`, and
    # probed before anything is held: each bound below is its own 4xx.
    max_video_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    video_max_duration_seconds: float = Field(default=600.0, gt=0, le=86400)
    video_max_pixels: int = Field(default=3840 * 2160, ge=10_000)
    video_max_fps: float = Field(default=60.0, gt=0, le=1000)
    video_max_frames: int = Field(default=36_000, ge=1)
    # H.264 CRF of a video result when the request names none (lower: better and larger; 18-23 is the usual range).
    video_crf: int = Field(default=20, ge=0, le=51)
    # A video job's deadline (and its hold's lifetime) is `job_deadline_seconds` plus this much per second of
    # (trimmed) video. 60: a CPU worker with real-size models takes about 0.4 s a frame to swap and 1 s more to
    # enhance, so 30 fps with the enhancer (or 60 fps without) needs some 40 s per second of video; the rest is
    # headroom for a retry after a worker dies. A 10-minute clip may then stay held up to about 10 hours.
    video_deadline_seconds_per_second: float = Field(default=60.0, gt=0, le=3600)

    # Metered jobs. A job's hold lives at most `job_deadline_seconds`; the sweeper fails and releases it by then
    # (plus one sweep interval): that is the bound on how long any token stays held.
    job_deadline_seconds: int = Field(default=900, ge=10, le=86400)
    job_max_attempts: int = Field(default=3, ge=1, le=10)
    # A running job whose worker has not heartbeated for this long is taken back (requeued or failed).
    job_heartbeat_seconds: float = Field(default=5.0, gt=0, le=60)
    job_stale_after_seconds: float = Field(default=30.0, gt=0, le=3600)
    # A queued job not started this long after it was queued is queued again (a lost queue entry).
    job_redispatch_seconds: float = Field(default=60.0, gt=0, le=3600)
    # The transactions that reserve (submit) and capture (settle) a job's hold commit without waiting for their WAL
    # flush when false: an account's row lock is then held only for the statement, which is what one hot account
    # needs (docs/benchmarks.md). Atomic either way, so tokens are never created or lost; a database crash may
    # forget the last acknowledged submits and settlements whole (a submit's client retries with its idempotency
    # key; a forgotten settlement leaves the job running, to be run again and settled once).
    holds_synchronous_commit: bool = True
    sweep_interval_seconds: float = Field(default=5.0, gt=0, le=300)
    # Every worker records a heartbeat in Redis this often (`facemint_workers_alive` and
    # `facemint_worker_heartbeat_age_seconds` on /metrics); a worker silent for `job_stale_after_seconds` is not
    # counted alive.
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0, le=60)
    # The workers reconcile the books (`facemint reconcile`'s checks, recorded in reconciliation_runs) when the
    # newest recorded run is this old; one worker at a time. 0: never (run it from cron or the console instead).
    reconcile_interval_seconds: float = Field(default=900.0, ge=0, le=7 * 86400)
    # The workers grant recurring credit grants' current periods (facemint.grants.issuing) this often; 0: never.
    # Platform-funded grants are credited `grant_chunk_size` accounts per transaction.
    grant_interval_seconds: float = Field(default=60.0, ge=0, le=86400)
    grant_chunk_size: int = Field(default=5000, ge=1, le=100_000)
    result_ttl_seconds: int = Field(default=86400, ge=60)
    prefer_wait_max_seconds: int = Field(default=60, ge=0, le=300)
    # Concurrent `Prefer: wait` requests per tenant (429 beyond): waiting holds no thread, but a connection.
    prefer_wait_max_per_tenant: int = Field(default=20, ge=1)
    # Queued plus running jobs per tenant, by plan (429 beyond): one tenant cannot fill every GPU.
    plan_max_active_jobs: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_PLAN_MAX_ACTIVE_JOBS))
    storage_dir: Path | None = None  # default: <data dir>/storage
    # "s3": inputs and results in an S3 bucket (credentials from boto3's standard chain: AWS_ACCESS_KEY_ID and
    # AWS_SECRET_ACCESS_KEY, a profile, an instance role); uploads and results still stage on local disk first.
    storage_backend: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    s3_prefix: str = ""  # prepended to every key ("facemint/"), so one bucket can hold several deployments
    s3_endpoint_url: str | None = None  # another S3 server (SeaweedFS, MinIO); AWS when unset
    s3_region: str | None = None
    # Objects at least this large are uploaded in parts (streamed from the staged file, several parts at a time).
    s3_multipart_threshold_bytes: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    # How a result leaves S3: "stream" (through the API, ranges passed on to S3) or "presigned" (a 307 to a
    # presigned URL valid `s3_presigned_ttl_seconds`, so the bytes skip the API).
    storage_result_delivery: Literal["stream", "presigned"] = "stream"
    s3_presigned_ttl_seconds: int = Field(default=300, ge=1, le=7 * 86400)
    # Encryption at rest of inputs and results (facemint.storage_crypto), on either backend: key id -> base64 of a
    # 32-byte AES-256 key (JSON in the environment), and the id new objects are sealed with. Unset: stored as is.
    # Rotation: add a key under a new id and point the id at it; objects sealed under older ids stay readable
    # while their key stays listed.
    storage_encryption_keys: dict[str, SecretStr] = Field(default_factory=dict)
    storage_encryption_key_id: str | None = None
    # While turning encryption on over existing objects: read an object without an encryption header as plaintext
    # until `facemint storage rekey` has sealed it. Off (the default), such an object is refused as unreadable.
    storage_encryption_read_plaintext: bool = False
    queue_name: str = "swaps"
    # Test and benchmark aid (refused in prod): each job pauses this long at its first stage boundary.
    debug_job_delay_seconds: float = Field(default=0.0, ge=0, le=600)
    # Test aid (refused in prod): a worker pauses this long between storing a result and settling the job.
    debug_pause_before_settle_seconds: float = Field(default=0.0, ge=0, le=600)
    # Files under inputs/ and results/ that no job accounts for (a worker killed between storing and settling,
    # a submit whose commit failed, a delete that failed) are removed once they are this old.
    orphan_file_grace_seconds: float = Field(default=3600.0, ge=1)
    orphan_sweep_interval_seconds: float = Field(default=600.0, gt=0)

    # Webhooks: Standard Webhooks signatures; private, loopback, link-local and metadata addresses are refused
    # unless their network is listed here (e.g. ["127.0.0.0/8"] in tests).
    webhook_allowed_networks: list[str] = Field(default_factory=list)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=30)
    webhook_max_attempts: int = Field(default=8, ge=1, le=20)
    webhook_backoff_seconds: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0]
    )
    # Senders per worker process, and at most this many attempts in flight per tenant across all workers: a
    # tenant whose endpoint swallows packets ties up its own share, never everyone's.
    webhook_concurrency: int = Field(default=8, ge=1, le=256)
    webhook_max_in_flight_per_tenant: int = Field(default=2, ge=1, le=256)

    # Integrations (facemint.integrations): credentials they store (a Zendesk API token and webhook signing secret)
    # are sealed with AES-256-GCM under these keys (key id -> base64 of 32 bytes, JSON in the environment), or the
    # storage encryption keys when these are unset; in dev, with neither, a published development key.
    integration_secret_keys: dict[str, SecretStr] = Field(default_factory=dict)
    integration_secret_key_id: str | None = None
    # Zendesk: the API is only ever called at https://<subdomain>.zendesk.com. Other base URLs (a local fake server)
    # must be listed here, exactly as the connector names them: a test aid, refused in prod.
    zendesk_allowed_base_urls: list[str] = Field(default_factory=list)
    # A webhook is refused unless its signature's timestamp is within this many seconds of now, and its body is
    # refused (413) beyond this many bytes before it is read.
    zendesk_webhook_tolerance_seconds: int = Field(default=300, ge=10, le=3600)
    zendesk_webhook_max_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Replies: each call to Zendesk's API finishes within the timeout; a failed attempt is retried after the next
    # backoff step (the last repeating), a 429 after its Retry-After (at most `zendesk_max_retry_after_seconds`).
    zendesk_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    zendesk_max_attempts: int = Field(default=8, ge=1, le=50)
    zendesk_backoff_seconds: list[float] = Field(default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0])
    zendesk_max_retry_after_seconds: float = Field(default=3600.0, gt=0, le=86400)
    # Every worker looks for replies due this often, and runs up to `zendesk_concurrency` at once.
    zendesk_poll_seconds: float = Field(default=1.0, gt=0, le=300)
    zendesk_concurrency: int = Field(default=4, ge=1, le=64)

    # Finance exports: concurrent streams per tenant (staff count as one) and in total (429 beyond), and the
    # longest one export's snapshot may stay open.
    export_max_concurrent_per_tenant: int = Field(default=2, ge=1)
    export_max_concurrent: int = Field(default=8, ge=1)
    export_max_seconds: int = Field(default=900, ge=1, le=86400)

    # /metrics: open in dev when no token is set; in prod it needs `Authorization: Bearer <metrics_token>`.
    metrics_token: SecretStr | None = None

    # The admin console (/admin): a server-side session in Redis behind an HttpOnly, SameSite=Strict cookie (Secure
    # in prod). It ends after `console_idle_seconds` without a request, and `console_absolute_seconds` after
    # sign-in whatever happens. Times are shown in the zone the viewer picks; this one until they pick.
    console_idle_seconds: int = Field(default=1800, ge=60, le=86400)
    console_absolute_seconds: int = Field(default=12 * 3600, ge=300, le=7 * 86400)
    console_default_timezone: str = "UTC"
    # A bulk-recharge preview (the uploaded file and the idempotency key fixed for it) lives this long.
    console_preview_ttl_seconds: int = Field(default=3600, ge=60, le=86400)

    api_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000

    @model_validator(mode="before")
    @classmethod
    def _default_env(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("env") in (None, ""):
            data = {**data, "env": Environment.prod if data.get("database_url") else Environment.dev}
        return data

    @field_validator("plan_max_active_jobs", mode="before")
    @classmethod
    def _parse_active_jobs(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, dict):
            return {**DEFAULT_PLAN_MAX_ACTIVE_JOBS, **value}
        return value

    @field_validator("plan_limits", mode="before")
    @classmethod
    def _parse_limits(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, dict):
            merged = {k: dict(v) for k, v in DEFAULT_PLAN_LIMITS.items()}
            for plan, limits in value.items():
                merged.setdefault(plan, {}).update(limits)
            return merged
        return value

    @model_validator(mode="after")
    def _require_a_bucket_for_s3(self) -> Settings:
        if self.storage_backend == "s3" and not self.s3_bucket:  # caught at start-up, not at the first upload
            raise ValueError("FACEMINT_STORAGE_BACKEND=s3 needs FACEMINT_S3_BUCKET")
        return self

    @model_validator(mode="after")
    def _check_storage_encryption(self) -> Settings:
        if self.storage_encryption_key_id is None:
            if self.storage_encryption_keys:
                raise ValueError("FACEMINT_STORAGE_ENCRYPTION_KEYS needs FACEMINT_STORAGE_ENCRYPTION_KEY_ID")
            return self
        self.storage_keyring()  # a missing, short or non-base64 key fails at start-up, not at the first upload
        if self.storage_backend == "s3" and self.storage_result_delivery == "presigned":
            # A presigned URL would hand the client the ciphertext: encrypted results stream through the API.
            raise ValueError("FACEMINT_STORAGE_RESULT_DELIVERY=presigned cannot serve encrypted results")
        return self

    @model_validator(mode="after")
    def _check_integration_keys(self) -> Settings:
        if self.integration_secret_key_id is None and self.integration_secret_keys:
            raise ValueError("FACEMINT_INTEGRATION_SECRET_KEYS needs FACEMINT_INTEGRATION_SECRET_KEY_ID")
        self.integration_keyring()  # a missing, short or non-base64 key fails at start-up, not at the first save
        return self

    def integration_keyring(self) -> Keyring | None:
        """The keys that seal integrations' credentials: their own, else the storage's; None when neither is set."""
        if self.integration_secret_key_id is None:
            return self.storage_keyring()
        from facemint.storage_crypto import Keyring

        keys = {key_id: value.get_secret_value() for key_id, value in self.integration_secret_keys.items()}
        return Keyring.from_base64(keys, self.integration_secret_key_id)

    def staging_grace_seconds(self) -> float:
        """How old a staged file or an unfinished multipart upload must be before the sweeper removes it: longer
        than any job may run (the longest video's deadline), as a video's staged files live as long as its job,
        plus the orphan grace."""
        longest_job = (
            self.job_deadline_seconds + self.video_deadline_seconds_per_second * self.video_max_duration_seconds
        )
        return longest_job + self.orphan_file_grace_seconds

    def storage_keyring(self) -> Keyring | None:
        """The keys that seal stored objects, or None when storage is not encrypted."""
        if self.storage_encryption_key_id is None:
            return None
        from facemint.storage_crypto import Keyring  # cryptography loads only where storage is encrypted

        keys = {key_id: value.get_secret_value() for key_id, value in self.storage_encryption_keys.items()}
        return Keyring.from_base64(keys, self.storage_encryption_key_id)

    @model_validator(mode="after")
    def _refuse_default_secrets_in_prod(self) -> Settings:
        if self.env is Environment.prod:
            problems = []
            for name, default in (("jwt_secret", DEV_JWT_SECRET), ("api_key_pepper", DEV_API_KEY_PEPPER)):
                value: SecretStr | None = getattr(self, name)
                if value is None or value.get_secret_value() in ("", default):
                    problems.append(f"FACEMINT_{name.upper()} is missing or a default")
                elif len(value.get_secret_value()) < 32:
                    problems.append(f"FACEMINT_{name.upper()} must be at least 32 characters")
            if self.debug_job_delay_seconds:
                problems.append("FACEMINT_DEBUG_JOB_DELAY_SECONDS is a test aid")
            if self.debug_pause_before_settle_seconds:
                problems.append("FACEMINT_DEBUG_PAUSE_BEFORE_SETTLE_SECONDS is a test aid")
            if self.zendesk_allowed_base_urls:
                problems.append("FACEMINT_ZENDESK_ALLOWED_BASE_URLS is a test aid")
            if problems:
                raise ValueError("refusing to start in prod: " + "; ".join(problems))
        return self

    @property
    def uses_builtin_secrets(self) -> bool:
        """Whether the JWT secret or the API-key pepper is missing or the published development default."""
        return any(
            value is None or value.get_secret_value() in ("", default)
            for value, default in ((self.jwt_secret, DEV_JWT_SECRET), (self.api_key_pepper, DEV_API_KEY_PEPPER))
        )

    @property
    def migration_database_url(self) -> str | None:
        return self.database_owner_url or self.database_url

    def max_active_jobs(self, plan: str) -> int:
        return self.plan_max_active_jobs.get(plan, self.plan_max_active_jobs["free"])

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def resolved_storage_dir(self) -> Path:
        return self.storage_dir if self.storage_dir is not None else self.data_dir / "storage"

    @property
    def jwt_signing_secret(self) -> str:
        return self.jwt_secret.get_secret_value() if self.jwt_secret else DEV_JWT_SECRET

    @property
    def jwt_verification_keys(self) -> dict[str, str]:
        keys = {kid: secret.get_secret_value() for kid, secret in self.jwt_previous_keys.items()}
        keys[self.jwt_kid] = self.jwt_signing_secret
        return keys

    @property
    def api_key_pepper_bytes(self) -> bytes:
        value = self.api_key_pepper.get_secret_value() if self.api_key_pepper else DEV_API_KEY_PEPPER
        return value.encode()

    def require_urls(self) -> tuple[str, str]:
        if not self.database_url or not self.redis_url:
            raise RuntimeError(
                "FACEMINT_DATABASE_URL and FACEMINT_REDIS_URL must be set (or use `facemint up`, "
                "which starts embedded Postgres and Redis)"
            )
        return self.database_url, self.redis_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
