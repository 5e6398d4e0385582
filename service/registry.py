"""The models being served: found under MODEL_DIR, loaded, warmed up, and hot-reloaded.

Every folder `<MODEL_DIR>/<name>/` is a model and every integer folder inside it a version
(hidden ones, such as `model_repository`'s `.staging-*`, are exports in progress); anything
else found there (files, temporary or non-ASCII names) is logged once and skipped, and a
folder that cannot be read is logged and retried at the next scan, never stopping it. A model
serves its newest version that loads and warms up, or its pinned one. Every
`poll_interval_s` the folder is scanned again: a newer version is loaded and warmed up beside
the live one, then swapped in by one assignment while requests keep flowing; a version that
fails is logged, remembered and not retried (publish a fixed export as a new version), and
the live one keeps serving. A broken or empty model never stops the others. A batcher that
stops on an unexpected error fails the requests it held (503), and is replaced at once; until
then the model is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from model_repository import existing_versions, is_version
from service.batching import MicroBatcher
from service.heap import freeze_loaded_models
from service.metrics import Metrics
from service.predictor import ModelError, Predictor, load_predictor
from service.settings import Settings

log = logging.getLogger(__name__)


class UnknownModel(LookupError):
    """No such model under MODEL_DIR."""


class ModelNotReady(Exception):
    """The model exists but has no live version (yet)."""


@dataclass
class ServedModel:
    """One model folder: what is on disk, what was rejected, and what is live."""

    name: str
    directory: Path
    pinned: int | None = None
    versions: list[int] = field(default_factory=list)  # on disk at the last scan
    failed: dict[int, str] = field(default_factory=dict)  # version -> why it was rejected
    predictor: Predictor | None = None  # the live version
    batcher: MicroBatcher | None = None  # created with the first live version

    @property
    def live_batcher(self) -> MicroBatcher:
        """The batcher, for a model `ModelRegistry.get` returned: one with a live version has one."""
        return cast(MicroBatcher, self.batcher)

    @property
    def problem(self) -> str | None:
        """Why the model is not serving, or None when it is."""
        if self.batcher is not None and self.batcher.crashed is not None:
            return f"its batcher stopped unexpectedly ({self.batcher.crashed!r}); restarting"
        if self.predictor is not None:
            return None
        if self.pinned is not None and self.pinned not in self.versions:
            return f"pinned version {self.pinned} not found in {self.name}/"
        if not self.versions:
            return f"no version folder in {self.name}/"
        if self.failed:
            version = max(self.failed)
            return f"version {version} failed to load: {self.failed[version]}"
        return "loading"


@dataclass(frozen=True)
class ModelState:
    """What a model folder holds and serves, for status answers: read, never changed."""

    name: str
    live: Predictor | None
    versions: list[int]  # on disk at the last scan
    pinned: int | None
    rejected: dict[int, str]  # version -> why it was rejected
    problem: str | None  # why the model is not serving, or None when it is


class ModelRegistry:
    """Every model under MODEL_DIR, kept loaded and up to date."""

    def __init__(self, settings: Settings, device: str, metrics: Metrics):
        self.settings = settings
        self.device = device
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.scanned = False
        self._skipped: set[str] = set()  # entries of MODEL_DIR already logged as skipped
        # Batch sizes traced and run once before serving: the smallest, a middling and the largest.
        self.warm_up_sizes = sorted({1, min(8, settings.max_batch_size), settings.max_batch_size})
        self._watcher: asyncio.Task | None = None
        self._refreshing = asyncio.Lock()  # the watcher and a caller must not load a version twice
        self._first_scan_done = asyncio.Event()  # every model found was loaded or rejected once

    def start(self) -> None:
        """Load the models in the background (so /healthz answers meanwhile), then keep watching."""
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="model-watcher")

    async def first_scan(self) -> None:
        """Return once the first scan has loaded (or rejected) every model it found."""
        await self._first_scan_done.wait()

    async def close(self) -> None:
        """Stop watching, then let every batcher finish the requests it holds."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for served in self.models.values():
            if served.batcher is not None:
                await served.batcher.close()

    def get(self, name: str) -> ServedModel:
        """The model called `name` with a live version; names are looked up among the folders
        found, never joined to a path, so no name can reach outside MODEL_DIR."""
        served = self.models.get(name)
        if served is None:
            raise UnknownModel(f"no model named {name!r}")
        if served.problem is not None:
            raise ModelNotReady(f"model {name!r} is not ready: {served.problem}")
        return served

    def state(self, name: str) -> ModelState:
        """Model `name` whatever its state, or UnknownModel."""
        served = self.models.get(name)
        if served is None:
            raise UnknownModel(f"no model named {name!r}")
        return ModelState(
            served.name,
            served.predictor,
            list(served.versions),
            served.pinned,
            dict(served.failed),
            served.problem,
        )

    def states(self) -> list[ModelState]:
        """Every model found, by name."""
        return [self.state(name) for name in sorted(self.models)]

    def image_model(self) -> ServedModel:
        """The image model for /predict/image: the first by name when several are served."""
        for name in sorted(self.models):
            predictor = self.models[name].predictor
            if predictor is not None and predictor.kind == "image":
                return self.models[name]
        if not self.scanned or any(served.problem for served in self.models.values()):
            raise ModelNotReady("no image model is ready")
        raise UnknownModel("no image model is served")

    def readiness(self) -> dict[str, str]:
        """Each model's state: "ready", or why not."""
        return {name: served.problem or "ready" for name, served in sorted(self.models.items())}

    @property
    def ready(self) -> bool:
        return (
            self.scanned
            and bool(self.models)
            and all(served.problem is None for served in self.models.values())
        )

    async def refresh(self) -> None:
        """Scan MODEL_DIR once and load what should be live but is not."""
        async with self._refreshing:
            await self._refresh()

    async def _refresh(self) -> None:
        found = await asyncio.to_thread(self._scan)
        for name, versions in found.items():
            served = self.models.get(name)
            if served is None:
                served = self.models[name] = ServedModel(
                    name, self.settings.model_dir / name, self.settings.model_versions.get(name)
                )
            served.versions = versions
        self.scanned = True
        for name in found:
            served = self.models[name]
            for version in self._candidates(served):
                if await self._load(served, version):
                    break

    async def _watch(self) -> None:
        interval = self.settings.poll_interval_s
        while True:
            try:
                await self.refresh()
            except Exception:  # the watcher must outlive a bad scan (permissions, races)
                log.exception("scanning %s failed", self.settings.model_dir)
            self._first_scan_done.set()
            if not interval:
                return
            await asyncio.sleep(interval)

    def _scan(self) -> dict[str, list[int]]:
        root = self.settings.model_dir
        if not root.is_dir():
            if not self.scanned:
                log.error("MODEL_DIR %s is not a folder: no models to serve", root)
            return {}
        found = {}
        for path in sorted(root.iterdir()):
            if path.name.startswith("."):
                continue
            if not path.is_dir():
                self._skip(path, "not a folder")
                continue
            try:
                found[path.name] = existing_versions(path)
                for entry in path.iterdir():
                    if not entry.name.startswith(".") and not (is_version(entry.name) and entry.is_dir()):
                        self._skip(entry, "not a version folder (a name of ASCII digits)")
            except OSError as error:  # unreadable, or removed while scanned: the next scan retries
                log.error("skipping %s/ this scan: %s", path.name, error.strerror or error)
        return found

    def _skip(self, path: Path, why: str) -> None:
        """Log an unexpected entry of MODEL_DIR once, by its place in it."""
        where = path.relative_to(self.settings.model_dir).as_posix()
        if where not in self._skipped:
            self._skipped.add(where)
            log.warning("skipping %r in MODEL_DIR: %s", where, why)

    def _candidates(self, served: ServedModel) -> list[int]:
        """Versions to try, best first: the pinned one, or those newer than the live one."""
        live = served.predictor.version if served.predictor else None
        if served.pinned is not None:
            wanted = [served.pinned] if served.pinned in served.versions else []
        else:
            wanted = [v for v in sorted(served.versions, reverse=True) if live is None or v > live]
        return [v for v in wanted if v != live and v not in served.failed]

    async def _load(self, served: ServedModel, version: int) -> bool:
        path = served.directory / str(version)
        live = served.predictor
        started = time.perf_counter()
        try:
            s = self.settings  # a fast runtime computes on one thread, the model's own
            predictor = await asyncio.to_thread(
                load_predictor, path, self.device, self.warm_up_sizes, s.model_runtime, 1, s.tta
            )
        except ModelError as error:
            # Without the host's paths: /models and /readyz show this to any client.
            where = f"{served.name}/{version}"
            served.failed[version] = str(error).replace(str(path.resolve()), where).replace(str(path), where)
            self.metrics.errors.labels("model_load").inc()
            keeping = f"; still serving version {live.version}" if live else ""
            log.error("rejected %s version %d (%s): %s%s", served.name, version, path, error, keeping)
            return False
        if served.batcher is None:
            served.batcher = self._new_batcher(served)
        served.predictor = predictor  # the swap: requests from now on get the new version
        self.metrics.live_version.labels(served.name).set(version)
        log.info(
            "serving %s version %d (%s, %s) on %s, loaded and warmed up in %.1fs%s",
            served.name,
            version,
            predictor.kind,
            predictor.runtime_name,
            self.device,
            time.perf_counter() - started,
            f", replacing version {live.version}" if live else "",
        )
        del live, predictor  # a replaced version no request holds is reclaimed just below
        freeze_loaded_models()
        return True

    def _new_batcher(self, served: ServedModel) -> MicroBatcher:
        name, s = served.name, self.settings
        batch_sizes = self.metrics.batch_size.labels(name)
        batch_seconds = self.metrics.batch_seconds.labels(name)
        queue_depth = self.metrics.queue_depth.labels(name)
        self.metrics.queue_capacity.labels(name).set(s.max_queue_size)
        rows_in_model = self.metrics.rows_in_model.labels(name)

        def on_batch(size: int, seconds: float) -> None:
            batch_sizes.observe(size)
            batch_seconds.observe(seconds)

        def on_load(queued: int, computing: int) -> None:
            queue_depth.set(queued)
            rows_in_model.set(computing)

        batcher = MicroBatcher(
            name,
            s.max_batch_size,
            s.max_batch_wait_ms / 1000,
            s.max_queue_size,
            on_batch,
            self.metrics.errors.labels("inference").inc,
            on_load,
        )
        batcher.task.add_done_callback(lambda task: self._batcher_stopped(served, batcher, task))
        return batcher

    def _batcher_stopped(self, served: ServedModel, batcher: MicroBatcher, task: asyncio.Task) -> None:
        """A batcher's task ended: on close, fine; on an unexpected error (its requests already
        failed with 503 and the model reads as not ready), log it and start a new batcher."""
        if task.cancelled() or task.exception() is None or served.batcher is not batcher:
            return
        self.metrics.errors.labels("inference").inc()
        log.error(
            "the batcher of model %s stopped unexpectedly; its requests got 503; starting a new one",
            served.name,
            exc_info=task.exception(),
        )
        served.batcher = self._new_batcher(served)
