"""``streamrec worker``: load the current model bundle and run the faust serving app."""

from __future__ import annotations

import asyncio
import logging
import sys

import faust

from models.bundle import latest_bundle
from models.serving import ServingModel
from stream.app import create_app
from stream.health import Health
from stream.kafka_admin import create_topics
from stream.logs import logging_config, setup_logging
from stream.metrics import WorkerMetrics
from stream.settings import Settings
from topics.names import all_topics

log = logging.getLogger("streamrec.worker")


def run_worker(settings: Settings) -> None:
    setup_logging(settings.log_level, settings.log_format)
    path = latest_bundle(settings.model_dir)
    if path is None:
        sys.exit(
            f"no model bundle under {settings.model_dir} (STREAMREC_MODEL_DIR); "
            "run `streamrec train` first"
        )
    # The HTTP server first: while the bundle loads and the app starts, /metrics answers,
    # /live and /ready say 503 (starting) and streamrec_ready is 0.
    metrics = WorkerMetrics()
    health = Health(metrics.ready)
    health.evaluate()
    metrics.serve(settings.metrics_port, health)
    model = ServingModel.load(path, device=settings.device)  # type: ignore[arg-type]
    metrics.model_info.labels(model.version, model.scorer.provider).set(1)
    asyncio.run(create_topics(settings.kafka_bootstrap_servers, all_topics(settings.topic_prefix)))
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run left none for faust
    app = create_app(settings, model, metrics, health=health)
    # faust's worker replaces the root logger's handlers at start: hand it our configuration.
    worker = faust.Worker(
        app,
        loglevel=settings.log_level.lower(),
        quiet=True,
        logging_config=logging_config(settings.log_level, settings.log_format),
    )
    # At WARNING and above faust turns the root logger to DEBUG to feed its terminal spinner,
    # which makes aiokafka build a log record per sent message. No spinner, no such cost.
    worker.spinner = None
    worker.execute_from_commandline()
