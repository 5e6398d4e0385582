"""The models being served: what MODEL_DIR holds, loaded, warmed up, and kept in step with it.

Every folder `<MODEL_DIR>/<name>/` is a model and every integer folder inside it a version
(hidden ones, such as `model_repository`'s `.staging-*`, are exports in progress); anything
else found there (files, temporary or non-ASCII names) is logged once and skipped. A model
serves its newest version that loads and warms up, or its pinned one (MODEL_VERSIONS).

The disk is the source of truth, as for TF Serving's file-system source and Triton's poll
mode: every `poll_interval_s` the folder is scanned again and the service follows it.
- A newer version is loaded and warmed up beside the live one, then swapped in by one
  assignment while requests keep flowing.
- A version whose folder vanished is dropped; requests already holding it finish on it. When
  that was the live one, the newest remaining version that loads becomes live (roll back by
  deleting), and the vanished one serves until it has.
- A model whose folder vanished is unloaded: its routes answer 404 from then on, and its
  batcher closes once the requests it holds are answered. Put back, it is served again.
- A version that fails to load is logged, its reason shown (`/models`, readiness answers of
  every protocol) and retried when its files change (a version read while it was still being
  written) or, unchanged, after a back-off doubling from RETRY_FIRST_S to RETRY_MAX_S; the
  live one keeps serving meanwhile.
- A model folder that cannot be read this scan is logged and left as it is; so is everything
  when MODEL_DIR itself cannot be read (logged once, until it can again): a volume that is
  briefly gone must not unload every model.
A broken, empty or half-written model never stops the others, nor makes the replica unready
(`ModelRegistry.ready`). A batcher that stops on an unexpected error fails the requests it held
(503), and is replaced at once; until then the model is not ready.

Nothing here runs on the event loop longer than a few milliseconds: scanning, loading and
warming up run in threads, and no garbage collection follows a load (service/heap.py says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from model_repository import existing_versions, is_version, version_files
from service.batching import MicroBatcher
from service.metrics import Metrics
from service.predictor import ModelError, Predictor, load_predictor
from service.settings import Settings

log = logging.getLogger(__name__)

# An unchanged version that failed is tried again after this long, then twice as long each
# time, up to RETRY_MAX_S: for failures that were not its files' (memory, a flaky volume).
RETRY_FIRST_S = 30.0
RETRY_MAX_S = 600.0
CLOSE_POLL_S = 0.1  # how often a vanished model's batcher is checked for requests still held

Files = tuple[tuple[str, int, int], ...]  # model_repository.version_files


class UnknownModel(LookupError):
    """No such model under MODEL_DIR."""


class ModelNotReady(Exception):
    """The model exists but has no live version (yet)."""


@dataclass
class Rejection:
    """Why a version failed to load, what its folder held then, and when to try it again."""

    why: str
    files: Files
    retry_at: float  # time.monotonic()
    attempts: int = 1


@dataclass
class ServedModel:
    """One model folder: what is on disk, what was rejected, and what is live."""

    name: str
    directory: Path
    pinned: int | None = None
    versions: list[int] = field(default_factory=list)  # on disk at the last scan
    failed: dict[int, Rejection] = field(default_factory=dict)  # on disk and rejected
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
            return f"version {version} failed to load: {self.failed[version].why}"
        return "loading"

    def may_serve(self, version: int) -> bool:
        """Whether `version` is one this model may serve: on disk, and the pinned one if pinned."""
        return version in self.versions and self.pinned in (None, version)


@dataclass(frozen=True)
class ModelState:
    """What a model folder holds and serves, for status answers: read, never changed."""

    name: str
    live: Predictor | None
    versions: list[int]  # on disk at the last scan
    pinned: int | None
    rejected: dict[int, str]  # version -> why it was rejected
    problem: str | None  # why the model is not serving, or None when it is


@dataclass
class Scan:
    """What one scan of MODEL_DIR found."""

    problem: str | None = None  # why MODEL_DIR could not be listed: nothing else was read
    models: dict[str, list[int]] = field(default_factory=dict)  # name -> versions on disk
    unreadable: set[str] = field(default_factory=set)  # model folders left as they are this scan
    files: dict[tuple[str, int], Files] = field(default_factory=dict)  # of the rejected versions


class ModelRegistry:
    """Every model under MODEL_DIR, kept loaded and in step with the disk."""

    def __init__(self, settings: Settings, device: str, metrics: Metrics):
        self.settings = settings
        self.device = device
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.scanned = False
        self.repository_problem: str | None = None  # why MODEL_DIR could not be read, until it can
        self.settled = False  # a scan has read MODEL_DIR and loaded or rejected all it found
        self._skipped: set[str] = set()  # entries of MODEL_DIR already logged as skipped
        # Batch sizes traced and run once before serving: the smallest, a middling and the largest.
        self.warm_up_sizes = sorted({1, min(8, settings.max_batch_size), settings.max_batch_size})
        self._watcher: asyncio.Task | None = None
        self._refreshing = asyncio.Lock()  # the watcher and a caller must not load a version twice
        self._first_scan_done = asyncio.Event()  # every model found was loaded or rejected once
        self._retiring: dict[asyncio.Task, MicroBatcher] = {}  # batchers of vanished models, closing

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
        batchers = [served.batcher for served in self.models.values() if served.batcher is not None]
        for task, batcher in list(self._retiring.items()):
            task.cancel()
            batchers.append(batcher)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for batcher in batchers:
            await batcher.close()

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
            {version: rejection.why for version, rejection in served.failed.items()},
            served.problem,
        )

    def states(self) -> list[ModelState]:
        """Every model found, by name."""
        return [self.state(name) for name in sorted(self.models)]

    def image_model(self) -> ServedModel:
        """The image model for /predict/image: the first by name when several are served."""
        for name in sorted(self.models):
            served = self.models[name]
            if served.predictor is not None and served.predictor.kind == "image" and served.problem is None:
                return served
        if not self.scanned or any(served.problem for served in self.models.values()):
            raise ModelNotReady("no image model is ready")
        raise UnknownModel("no image model is served")

    def readiness(self) -> dict[str, str]:
        """Each model's state: "ready", or why not."""
        return {name: served.problem or "ready" for name, served in sorted(self.models.items())}

    @property
    def ready(self) -> bool:
        """Whether this replica should take traffic: a first scan has read MODEL_DIR and loaded
        (or rejected) every model it found, at least one model is live, and every live model can
        take requests. A model with no loadable version (an empty folder, a version still being
        written, only broken ones, or its first version loading after start-up) is reported
        per model but does not count: a newcomer never takes the models that serve hostage."""
        live = [served for served in self.models.values() if served.predictor is not None]
        return self.settled and bool(live) and all(served.problem is None for served in live)

    async def refresh(self) -> None:
        """Scan MODEL_DIR once and bring what is served in step with it."""
        async with self._refreshing:
            await self._refresh()

    async def _refresh(self) -> None:
        rejected = {(name, v) for name, served in self.models.items() for v in served.failed}
        scan = await asyncio.to_thread(self._scan, rejected)
        self.scanned = True
        self._note_repository(scan.problem)
        if scan.problem is not None:
            return  # nothing was read: keep serving what is loaded
        for name in [n for n in self.models if n not in scan.models and n not in scan.unreadable]:
            self._retire(self.models.pop(name))
        now = time.monotonic()
        for name, versions in scan.models.items():
            served = self.models.get(name)
            if served is None:
                served = self.models[name] = ServedModel(
                    name, self.settings.model_dir / name, self.settings.model_versions.get(name)
                )
            served.versions = versions
            for version, rejection in list(served.failed.items()):
                if version not in versions:
                    del served.failed[version]
                elif scan.files.get((name, version)) != rejection.files:
                    rejection.retry_at = now  # rewritten since it failed: try it now
        for name in scan.models:
            await self._follow_disk(self.models[name])
        self.settled = True

    async def _follow_disk(self, served: ServedModel) -> None:
        """Serve the best version on disk: load what should be live and is not, and drop a live
        version that may no longer be served when nothing replaces it."""
        for version in self._candidates(served):
            if await self._load(served, version):
                return
        live = served.predictor
        if live is not None and not served.may_serve(live.version):
            served.predictor = None
            self.metrics.live_version.labels(served.name).set(0)
            log.warning(
                "unloaded %s version %d: its folder is gone and no other version loads (%s)",
                served.name,
                live.version,
                served.problem,
            )

    async def _watch(self) -> None:
        interval = self.settings.poll_interval_s
        while True:
            try:
                await self.refresh()
            except Exception:  # the watcher must outlive a bad scan (races, bugs)
                log.exception("scanning %s failed", self.settings.model_dir)
            self._first_scan_done.set()
            if not interval:
                return
            await asyncio.sleep(interval)

    def _scan(self, rejected: set[tuple[str, int]]) -> Scan:
        """Read MODEL_DIR (in a thread): the models and versions, and what the folders of the
        `rejected` versions hold now."""
        root = self.settings.model_dir
        try:
            entries = sorted(root.iterdir())
        except FileNotFoundError:
            return Scan(problem=f"MODEL_DIR {root} does not exist")
        except NotADirectoryError:
            return Scan(problem=f"MODEL_DIR {root} is not a folder")
        except OSError as error:
            return Scan(problem=f"MODEL_DIR {root} cannot be read: {error.strerror or error}")
        scan = Scan()
        for path in entries:
            if path.name.startswith("."):
                continue
            if not path.is_dir():
                self._skip(path, "not a folder")
                continue
            try:
                scan.models[path.name] = existing_versions(path)
                for entry in path.iterdir():
                    if not entry.name.startswith(".") and not (is_version(entry.name) and entry.is_dir()):
                        self._skip(entry, "not a version folder (a name of ASCII digits)")
            except OSError as error:  # unreadable, or removed while scanned: the next scan retries
                scan.models.pop(path.name, None)
                scan.unreadable.add(path.name)
                log.error("skipping %s/ this scan: %s", path.name, error.strerror or error)
        for name, version in rejected:
            if version in scan.models.get(name, ()):
                scan.files[name, version] = version_files(root / name / str(version))
        return scan

    def _note_repository(self, problem: str | None) -> None:
        """Log once when MODEL_DIR cannot be read, and once when it can again."""
        if problem == self.repository_problem:
            return
        if problem is None:
            log.info("MODEL_DIR %s can be read again", self.settings.model_dir)
        elif any(served.predictor for served in self.models.values()):
            log.error("%s: serving the models loaded, unchanged, until it can be read", problem)
        else:
            log.error("%s: no models to serve", problem)
        self.repository_problem = problem

    def _skip(self, path: Path, why: str) -> None:
        """Log an unexpected entry of MODEL_DIR once, by its place in it."""
        where = path.relative_to(self.settings.model_dir).as_posix()
        if where not in self._skipped:
            self._skipped.add(where)
            log.warning("skipping %r in MODEL_DIR: %s", where, why)

    def _candidates(self, served: ServedModel) -> list[int]:
        """Versions to try, best first: the pinned one, or those newer than the live one (all
        of them once the live one may no longer be served); those rejected only when due."""
        live = served.predictor.version if served.predictor else None
        if live is not None and not served.may_serve(live):
            live = None  # its folder is gone: any version on disk is better
        if served.pinned is not None:
            wanted = [served.pinned] if served.pinned in served.versions else []
        else:
            wanted = [v for v in sorted(served.versions, reverse=True) if live is None or v > live]
        now = time.monotonic()
        return [
            v for v in wanted if v != live and (v not in served.failed or served.failed[v].retry_at <= now)
        ]

    async def _load(self, served: ServedModel, version: int) -> bool:
        path = served.directory / str(version)
        live = served.predictor
        started = time.perf_counter()
        files, loaded = await asyncio.to_thread(self._read_version, path)
        if isinstance(loaded, ModelError):
            self._reject(served, version, files, loaded)
            return False
        served.failed.pop(version, None)
        if served.batcher is None:
            served.batcher = self._new_batcher(served)
        served.predictor = loaded  # the swap: requests from now on get the new version
        self.metrics.live_version.labels(served.name).set(version)
        replacing = ""
        if live is not None:
            gone = "" if live.version in served.versions else " (its folder is gone)"
            replacing = f", replacing version {live.version}{gone}"
        log.info(
            "serving %s version %d (%s, %s) on %s, loaded and warmed up in %.1fs%s",
            served.name,
            version,
            loaded.kind,
            loaded.runtime_name,
            self.device,
            time.perf_counter() - started,
            replacing,
        )
        return True

    def _read_version(self, path: Path) -> tuple[Files, Predictor | ModelError]:
        """What the folder holds (read first: files written during the load make the next scan
        try again), and the version loaded and warmed up or why not (in a thread)."""
        files = version_files(path)
        s = self.settings  # a fast runtime computes on one thread, the model's own
        try:
            return files, load_predictor(path, self.device, self.warm_up_sizes, s.model_runtime, 1, s.tta)
        except ModelError as error:
            return files, error

    def _reject(self, served: ServedModel, version: int, files: Files, error: ModelError) -> None:
        path = served.directory / str(version)
        # Without the host's paths: /models and /readyz show this to any client.
        where = f"{served.name}/{version}"
        why = str(error).replace(str(path.resolve()), where).replace(str(path), where)
        previous = served.failed.get(version)
        attempts = previous.attempts + 1 if previous and previous.files == files else 1
        retry_in = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempts - 1))
        served.failed[version] = Rejection(why, files, time.monotonic() + retry_in, attempts)
        self.metrics.errors.labels("model_load").inc()
        live = served.predictor
        keeping = f"; still serving version {live.version}" if live else ""
        log.error(
            "rejected %s version %d (%s): %s%s; trying again when its files change, or in %.0fs",
            served.name,
            version,
            path,
            error,
            keeping,
            retry_in,
        )

    def _retire(self, served: ServedModel) -> None:
        """Unload a model whose folder vanished (already out of `models`: new requests get 404);
        its batcher closes once the requests it holds are answered."""
        live = served.predictor
        served.predictor = None
        self.metrics.live_version.labels(served.name).set(0)
        log.warning(
            "model %s is gone from MODEL_DIR: unloaded%s",
            served.name,
            f" (was serving version {live.version})" if live else "",
        )
        if served.batcher is not None:
            batcher = served.batcher
            task = asyncio.get_running_loop().create_task(self._close_when_idle(batcher))
            self._retiring[task] = batcher
            task.add_done_callback(lambda task: self._retiring.pop(task, None))

    async def _close_when_idle(self, batcher: MicroBatcher) -> None:
        """Close `batcher` once no request is on its way to it, waiting or computed (or after
        SHUTDOWN_TIMEOUT_S, as a server stopping would)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_timeout_s
        while not batcher.idle and loop.time() < deadline:
            await asyncio.sleep(CLOSE_POLL_S)
        await batcher.close()

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
