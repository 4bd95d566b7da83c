"""``streamrec worker``: load the current model bundle and run the faust serving app."""

from __future__ import annotations

import asyncio
import logging
import sys

import faust

from models.bundle import latest_bundle
from models.serving import ServingModel
from stream.app import create_app
from stream.kafka_admin import create_topics
from stream.metrics import WorkerMetrics
from stream.settings import Settings
from topics.names import all_topics

log = logging.getLogger("streamrec.worker")


def run_worker(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    path = latest_bundle(settings.model_dir)
    if path is None:
        sys.exit(
            f"no model bundle under {settings.model_dir} (STREAMREC_MODEL_DIR); "
            "run `streamrec train` first"
        )
    model = ServingModel.load(path, device=settings.device)  # type: ignore[arg-type]
    metrics = WorkerMetrics()
    metrics.model_info.labels(model.version, model.scorer.provider).set(1)
    metrics.serve(settings.metrics_port)
    asyncio.run(create_topics(settings.kafka_bootstrap_servers, all_topics(settings.topic_prefix)))
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run left none for faust
    app = create_app(settings, model, metrics)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    # At WARNING and above faust turns the root logger to DEBUG to feed its terminal spinner,
    # which makes aiokafka build a log record per sent message. No spinner, no such cost.
    worker.spinner = None
    worker.execute_from_commandline()
