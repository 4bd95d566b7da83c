"""Structured logs (stream/logs.py): JSON lines with the record's extra fields."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from stream.logs import JsonFormatter, logging_config, setup_logging


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    r = logging.LogRecord("streamrec.worker", logging.DEBUG, __file__, 1, msg, args, exc_info)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_json_line_has_the_standard_and_the_extra_fields() -> None:
    r = record("batch %d: %d events", 7, 64, batch_id=7, batch_size=64, model_version="v1",
               stage_ms={"state": 1.25}, at=object())  # fmt: skip
    line = JsonFormatter().format(r)
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "DEBUG" and out["logger"] == "streamrec.worker"
    assert out["message"] == "batch 7: 64 events"
    assert out["ts"].endswith("+00:00") and "T" in out["ts"]
    assert (out["batch_id"], out["batch_size"], out["model_version"]) == (7, 64, "v1")
    assert out["stage_ms"] == {"state": 1.25}
    assert out["at"].startswith("<object")  # not JSON: written as its str, line kept
    for standard in ("args", "msg", "levelno", "pathname", "thread", "created"):
        assert standard not in out


def test_json_line_carries_the_traceback() -> None:
    out = json.loads(JsonFormatter().format(record("failed", exc=True)))
    assert "ValueError: boom" in out["exc"]


def test_setup_logging_switches_format(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("INFO", "json")
        logging.getLogger("streamrec.test").info("hello %s", "there", extra={"model_version": "v2"})
        logging.getLogger("streamrec.test").debug("not at INFO")
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
        assert [(x["message"], x["model_version"]) for x in lines] == [("hello there", "v2")]
        setup_logging("INFO", "text")
        logging.getLogger("streamrec.test").info("plain")
        err = capsys.readouterr().err
        assert "INFO streamrec.test plain" in err and "{" not in err
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        logging_config("INFO", "xml")


def test_the_config_keeps_existing_loggers_enabled() -> None:
    cfg = logging_config("DEBUG", "json")
    assert cfg["disable_existing_loggers"] is False and cfg["root"]["level"] == "DEBUG"
    assert cfg["handlers"]["streamrec"]["stream"] == "ext://sys.stderr"
