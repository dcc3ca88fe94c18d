"""Configuration: `AppArgs` (the `args` of serve_config.yaml) and process settings from the environment.

Model settings (which weights, compute type, device, batch size...) live in one place: the `user_config`
of each model deployment under `deployments:` in serve_config.yaml. Serve applies a changed
`user_config` to the running replicas (`reconfigure`: measured teardown, new model), whereas a change
to `args` rebuilds the app and replaces every replica; so `args` refuses model settings and names
where they go. Secrets never live here: they come from the environment (`ServiceSettings`), on
Kubernetes from a Secret.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serve_app.subtitles import SubtitleOptions

MODEL_SETTINGS = {"asr": "AsrDeployment", "alignment": "AlignmentDeployment", "diarization": "DiarizationDeployment"}
"""Keys that older configs had under `args`, by the deployment whose `user_config` now holds them."""


class IngressConfig(BaseModel):
    """Limits and defaults of the HTTP front door."""

    model_config = ConfigDict(extra="forbid")

    max_upload_mib: float = Field(200, gt=0, description="largest accepted upload, MiB (413 above)")
    max_audio_duration_s: float = Field(4 * 3600, gt=0, description="longest accepted audio, seconds (413 above)")
    upload_idle_timeout_s: float = Field(20, gt=0, description="longest pause in an arriving upload, seconds "
                                         "(408 beyond)")
    min_upload_kib_s: float = Field(32, gt=0, description="slowest average rate an upload may arrive at after "
                                    "upload_grace_s, KiB/s (408 below)")
    upload_grace_s: float = Field(10, ge=0, description="seconds an upload may take before min_upload_kib_s applies")
    max_queue_wait_s: float = Field(60, gt=0, description="refuse (503 with Retry-After) a request whose "
                                    "expected wait for the audio queued ahead of it is longer, seconds")
    initial_speed: float = Field(10, gt=0, description="audio seconds per second the service is assumed to "
                                 "process until it has measured itself (admission's first estimate)")
    max_chunks_in_flight: int = Field(32, ge=1, le=1024, description="speech chunks of one request sent to the "
                                      "ASR deployment at once; more wait until one is done, so requests take "
                                      "turns at the replicas. At least batch_size x ASR replicas, or a long "
                                      "file cannot use every replica")
    decode_timeout_s: float = Field(300, gt=0, description="wall-clock limit for decoding one upload, seconds")
    decode_memory_limit_mib: int = Field(4096, ge=256, description="address-space limit of the decoder process, MiB")
    model_aliases: list[str] = Field(["whisper-1"], description="extra model ids accepted in requests and "
                                     "listed by GET /v1/models (so clients written for OpenAI work unchanged)")
    subtitles: SubtitleOptions = Field(default_factory=SubtitleOptions, description="default subtitle layout")


class JobsConfig(BaseModel):
    """Durable jobs (serve_app/jobs): where they are kept, how big they may be, how they run and expire."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="offer the /v1/audio/*/jobs, /v1/jobs and /v1/speakers routes")
    data_dir: str | None = Field(None, description="where jobs are kept: the SQLite job store (jobs.sqlite3) and "
                                 "the spooled uploads (spool/). On a cluster, a volume every ingress replica mounts "
                                 "(uploads are read by whichever replica runs the job). None: "
                                 "$TRANSCRIPTION_DATA_DIR, else ~/.local/share/transcription-service")
    store_url: str | None = Field(None, description="the shared job store, redis://host:6379/0 (several ingress "
                                  "replicas); None: a SQLite file in data_dir. One with a password goes in the "
                                  "environment instead, TRANSCRIPTION_JOB_STORE_URL, which wins over this")
    max_upload_mib: float = Field(1024, gt=0, description="largest accepted job upload, MiB (413 above); the "
                                  "decoder reads it whole, so keep decode_memory_limit_mib above it")
    max_audio_duration_s: float = Field(12 * 3600, gt=0, description="longest accepted job audio, seconds")
    decode_timeout_s: float = Field(1800, gt=0, description="wall-clock limit for decoding one job's upload, seconds")
    decode_memory_limit_mib: int = Field(6144, ge=256, description="address-space limit of a job's decoder "
                                         "process, MiB: the upload, 12 h of 16 kHz samples (2.6 GiB) and room")
    retention_s: float = Field(7 * 24 * 3600, gt=0, description="how long an ended job, its result and its upload "
                               "are kept, seconds; then they are deleted")
    lease_s: float = Field(30, ge=2, description="a running job whose runner has not renewed its lease for this "
                           "long (the replica died) is taken over by another runner, seconds")
    max_running: int = Field(1, ge=1, le=64, description="jobs one ingress replica runs at once")
    max_chunks_in_flight: int = Field(8, ge=1, le=1024, description="speech chunks of one job sent to the ASR "
                                      "deployment at once: about two of its batches (one filling while one "
                                      "decodes: a job at full speed), and well under its max_ongoing_requests "
                                      "minus batch_size, so that interactive chunks always find room at the "
                                      "replica and pass the job's there (benchmarks/job_priority.py)")
    max_attempts: int = Field(3, ge=1, le=20, description="a job whose runner died this many times is failed "
                              "instead of being run again")
    callback_allow: list[str] = Field(default_factory=list, description="callback targets allowed although "
                                      "they are loopback, link-local or metadata addresses: CIDR networks or "
                                      "host names")
    callback_allow_http: bool = Field(False, description="allow http:// callback URLs (https only otherwise)")


class AppArgs(BaseModel):
    """The `args` of `serve_app.app:build_app`, validated once when the app is built."""

    model_config = ConfigDict(extra="forbid")

    ingress: IngressConfig = Field(default_factory=IngressConfig)
    diarization_enabled: bool = Field(True, description="deploy the diarization deployment at all")
    jobs: JobsConfig = Field(default_factory=JobsConfig)

    @model_validator(mode="before")
    @classmethod
    def _no_model_settings(cls, data: Any) -> Any:
        misplaced = sorted(set(data) & set(MODEL_SETTINGS)) if isinstance(data, dict) else []
        if misplaced:
            where = "; ".join(f"`{key}` -> the user_config of {MODEL_SETTINGS[key]}" for key in misplaced)
            raise ValueError(f"model settings do not go in args ({where}, under `deployments:`): a change "
                             "there is swapped in place, whereas a change to args replaces every replica")
        return data


class ServiceSettings(BaseSettings):
    """Process settings and secrets, read from the environment only."""

    model_config = SettingsConfigDict(env_prefix="TRANSCRIPTION_", extra="ignore")

    api_key: SecretStr | None = Field(None, description="if set, requests must send Authorization: Bearer <key>")
    data_dir: str = Field("~/.local/share/transcription-service", description="where jobs are kept when "
                          "args.jobs.data_dir does not say (a container's volume)")
    job_store_url: SecretStr | None = Field(None, description="the job store's URL when it holds a password "
                                            "(redis://:password@host:6379/0); wins over args.jobs.store_url")
    callback_secret: SecretStr | None = Field(None, description="key of the HMAC-SHA256 signature on job "
                                              "callbacks; without it callbacks are sent unsigned")
