"""Service configuration, read once from the environment (or passed in whole by tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.process.layout import layout_for


def from_the_machine(part: str):
    """A default taken from this machine's layout (service/process/layout.py) for the device asked for,
    which is validated first: fields are validated in the order they are declared."""
    return lambda fields: getattr(layout_for(fields.get("device", "auto")), part)


class Settings(BaseSettings):
    """Every knob of the service; environment variables have the field's name in capitals."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    # Models: TF Serving layout, <model_dir>/<name>/<version>/ with assets.extra/metadata.json.
    model_dir: Path = Path("models")
    # Serve these versions instead of the newest, e.g. MODEL_VERSIONS="cifar10=1,iris=2".
    model_versions: Annotated[dict[str, int], NoDecode] = {}
    # Seconds between scans of model_dir, which the service follows (versions added, deleted,
    # fixed; models added, removed); 0 reads it once, at start-up.
    poll_interval_s: float = Field(10.0, ge=0)

    # What computes each model's outputs (service/runtimes.py): auto (an export's declared fast
    # form on the CPU, e.g. its TFLite int8 model; the SavedModel on a GPU or where none is
    # declared), savedmodel (always), or a fast form's name (that form where a model declares it).
    model_runtime: str = Field("auto", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    # Test-time augmentation of image models: flip averages each image's probabilities with its
    # mirror's, at twice the model's compute (docs/models/fastpath.md gives what it buys).
    tta: Literal["none", "flip"] = "none"

    # Where models run: auto (a GPU when one is visible), cpu, or gpu (start-up fails without one).
    device: Literal["auto", "cpu", "gpu"] = "auto"
    # Server processes, each with its own event loop, copy of the models and batcher, and
    # TensorFlow's thread pools in each; 0 threads lets TensorFlow choose (one per core). Unset,
    # they follow the cores this process may use, container CPU limits included
    # (service/process/layout.py): on CPUs a worker per core with one model thread each, on a GPU one
    # worker. One scrape of /metrics sums all workers (service/metrics.py).
    workers: int = Field(default_factory=from_the_machine("workers"), ge=1)
    intra_op_threads: int = Field(default_factory=from_the_machine("intra_op_threads"), ge=0)
    inter_op_threads: int = Field(default_factory=from_the_machine("inter_op_threads"), ge=0)

    # Micro-batching: one model call takes at most max_batch_size rows (also the most one
    # request may send) and waits at most max_batch_wait_ms for requests already on their way.
    max_batch_size: int = Field(128, ge=1)
    max_batch_wait_ms: float = Field(2.0, ge=0)
    # Rows waiting per model beyond which requests get 503 + Retry-After instead of queueing.
    max_queue_size: int = Field(2048, ge=1)
    # The deadline of a request that states none (HTTP's Request-Timeout header, v2's `timeout`
    # parameter, a gRPC deadline), in seconds from when it came in (its body's last byte, over
    # HTTP: a slow upload is the network's time, not the queue's): one the model would not
    # answer by then at its recent rate is refused at once (503 + Retry-After), one still queued
    # then gets 504 (service/deadlines.py). Shorter than clients' own timeouts, so that under
    # overload the model's time goes to requests whose clients still wait, not to those gone:
    # 0.7 leaves a client that gives up after 1 s the time its request spends before the service
    # sees it and after the answer leaves (benchmarks/overload.py: at 1.0, answers came late).
    request_timeout_s: float = Field(0.7, gt=0)
    # Threads decoding uploads; Pillow releases the GIL, so they overlap with the event loop.
    decode_threads: int = Field(2, ge=1)
    # Recover the original of an upload that is an enlargement of the model's input size (see
    # service.resizing); off: every other size is resized with Lanczos.
    undo_enlargements: bool = True

    # Request limits: body bytes (checked while reading), seconds to receive a whole body,
    # and decoded pixels per image (decompression bombs are refused from the header).
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    body_timeout_s: float = Field(30.0, gt=0)
    max_image_pixels: int = Field(50_000_000, ge=1)
    # Decoding budget (service/budget.py): MiB of decoded pixels one worker holds at once, all
    # its uploads together (over it: 413; taken by others for decode_wait_s: 503), and the
    # pixels one request may decode in all, which bounds its CPU time (about 1 CPU-s here).
    # Memory: the service stays within its idle size + workers × decode_budget_mb of decoding.
    decode_budget_mb: int = Field(192, ge=1)
    decode_wait_s: float = Field(2.0, ge=0)
    max_request_pixels: int = Field(64_000_000, ge=1)

    # Predict endpoints need this key (X-API-Key or Authorization: Bearer) when it is set.
    api_key: SecretStr | None = None
    # Origins allowed by CORS, e.g. CORS_ORIGINS="https://a.example,https://b.example"; none: off.
    cors_origins: Annotated[list[str], NoDecode] = []

    # Where the server listens, what it logs, and whether it logs every request.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # gRPC (Open Inference Protocol v2, TF Serving's PredictionService, grpc.health.v1) on this
    # port of the same host, served by every worker; 0 turns it off. 8081 is KServe's and
    # MLServer's (Triton's is 8001, TF Serving's 8500: docs/api/grpc.md). Messages are held to
    # max_upload_bytes, the same limit as HTTP bodies.
    grpc_port: int = Field(8081, ge=0, le=65535)
    # Seconds a gRPC connection lives before the server ends it (GOAWAY) and the client
    # reconnects: a connection's calls all reach one worker, so this is how one client
    # channel's calls spread over every worker (docs/api/grpc.md). Each reconnection costs a
    # client a connection set-up (about a millisecond nearby): raise it for clients far away,
    # or with one worker; 0 keeps connections forever.
    grpc_max_connection_age_s: float = Field(0.25, ge=0)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = True
    # Idle keep-alive connections close after this. On SIGTERM (after drain_delay_s) both
    # doors stop taking new work at once and the requests and RPCs in flight get
    # shutdown_timeout_s, together, to finish; the Helm chart's grace period is computed from it.
    timeout_keep_alive_s: int = Field(5, ge=1)
    shutdown_timeout_s: int = Field(30, ge=1)
    # After SIGTERM, seconds of answering /readyz with 503 while still serving, before the
    # listener closes: load balancers that check /readyz stop sending requests first
    # (service/process/draining.py). 0 under Kubernetes, where the pod's preStop sleep does this.
    drain_delay_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _grpc_beside_http(self):
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(
                f"GRPC_PORT and PORT are both {self.port}: gRPC needs a port of its own"
                " (8081 by default), or GRPC_PORT=0 for no gRPC"
            )
        return self

    @model_validator(mode="after")
    def _queue_holds_a_batch(self):
        if self.max_queue_size < self.max_batch_size:
            raise ValueError("max_queue_size must be at least max_batch_size, or large requests never fit")
        return self

    @field_validator("model_versions", mode="before")
    @classmethod
    def _parse_pins(cls, value):
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("expected name=version pairs separated by commas")
            return {name.strip(): version.strip() for name, version in pairs}
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value):
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return value or None

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.lower() if isinstance(value, str) else value
