"""Hot swap of the served model: announcements on ``model-updates`` and the per-worker swapper.

``announce`` publishes a ``ModelUpdate`` after a bundle was promoted (or rolled back) on the
shared model directory. Every worker follows the topic in a consumer group of its own (see
stream/app.py), so each one hears every announcement, and loads the named bundle with
``ModelSwapper.load``: off the event loop, checksums verified, ONNX warmed up, and only then
swapped in with one reference assignment. ``BatchHandler`` reads the model once per
micro-batch, so a swap lands between batches, never inside one. A bundle that fails to load
(tampered, missing, wrong shape) is refused: the worker keeps serving what it had and counts
``streamrec_model_swap_failures_total{reason}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter

from models.bundle import BundleIntegrityError, ModelError
from models.scoring import Device
from models.serving import ServingModel
from stream.transport import KafkaSecurity, kafka_kwargs
from topics.model_updates import ModelUpdate

log = logging.getLogger("streamrec.worker")

# A counter may only be registered once per registry: one per registry, created on demand,
# so that WorkerMetrics (not owned here) needs no new family.
_FAILURES: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def swap_failures(registry: CollectorRegistry) -> Counter:
    """``streamrec_model_swap_failures_total{reason}`` in ``registry`` (created once)."""
    if registry not in _FAILURES:
        _FAILURES[registry] = Counter(
            "streamrec_model_swap_failures",
            "Model bundles refused at hot swap (the previous model kept serving), by reason",
            ["reason"],
            registry=registry,
        )
    return _FAILURES[registry]


async def announce(
    bootstrap: str, topic: str, update: ModelUpdate, *, security: KafkaSecurity | None = None
) -> None:
    """Publish ``update`` on ``topic`` and wait until every in-sync replica has it (acks=all),
    so that a ``models promote`` that returns has really told the workers. ``security``
    None: the configuration in the environment."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **kafka_kwargs(security))
    await producer.start()
    try:
        await producer.send_and_wait(topic, update.to_bytes())  # 1 partition: no key needed
    finally:
        await producer.stop()


Loader = Callable[[Path], ServingModel]
OnSwap = Callable[[ServingModel, ServingModel, float], None]


class ModelSwapper:
    """Holds the served ``ServingModel`` of this worker and replaces it on request.

    ``current`` is read by whoever serves (``BatchHandler`` once per batch); ``load`` builds
    the new model in a worker thread and then rebinds ``current`` in one assignment on the
    event loop, which cannot interleave with a batch's synchronous code. Nothing else keeps
    the old model: once the batch in flight (if any) drops its local reference, its arrays,
    FAISS index and ONNX session are freed. Loads are serialised (a lock), so two
    announcements in quick succession end on the later one.
    """

    def __init__(
        self,
        model: ServingModel,
        *,
        registry: CollectorRegistry,
        device: Device = "auto",
        loader: Loader | None = None,
        on_swap: OnSwap | None = None,
    ) -> None:
        self.current = model
        self.device: Device = device
        self.failures = swap_failures(registry)
        self._loader = loader or self._load_bundle
        self._on_swap = on_swap
        self._lock = asyncio.Lock()
        # Versions that failed to load: the periodic CURRENT check skips them (one error, not
        # one per tick); an announcement of the version tries it again.
        self.refused: set[str] = set()

    def _load_bundle(self, path: Path) -> ServingModel:
        return ServingModel.load(path, device=self.device)

    @property
    def version(self) -> str:
        return str(self.current.version)

    async def load(self, version_path: Path) -> bool:
        """Load, verify and warm up the bundle at ``version_path``, then serve it. Returns
        whether the served model changed; a failure keeps the old model and is logged and
        counted, never raised, so a bad bundle cannot stop a worker."""
        async with self._lock:
            version_path = Path(version_path)
            if version_path.name == self.version:
                return False
            t0 = time.perf_counter()
            try:
                new = await asyncio.to_thread(self._loader, version_path)
            except BundleIntegrityError as exc:
                return self._refuse("integrity", version_path, exc)
            except ModelError as exc:
                return self._refuse("invalid", version_path, exc)
            except FileNotFoundError as exc:
                return self._refuse("missing", version_path, exc)
            except Exception as exc:  # ONNX Runtime, FAISS, numpy: any load error
                return self._refuse("load_error", version_path, exc)
            self.refused.discard(version_path.name)
            old, self.current = self.current, new
            ms = (time.perf_counter() - t0) * 1000
            log.info(
                "serving model %s (was %s) after %.0f ms", new.version, old.version, ms,
                extra={"model_version": str(new.version), "previous_version": str(old.version),
                       "swap_ms": round(ms, 1)},
            )  # fmt: skip
            if self._on_swap is not None:
                self._on_swap(old, new, ms)
            del old  # the swapper holds no reference to the previous model
            return True

    def _refuse(self, reason: str, path: Path, exc: BaseException) -> bool:
        self.refused.add(path.name)
        self.failures.labels(reason).inc()
        log.error(
            "model bundle %s refused (%s: %s); still serving %s", path, reason, exc, self.version,
            extra={"model_version": self.version, "refused_version": path.name, "reason": reason},
        )  # fmt: skip
        return False
