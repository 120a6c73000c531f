"""One log stream with a timestamp and a level on every line, as text or JSON (tandem.logs)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from tandem.logs import configure


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_lines_carry_a_timestamp_a_level_and_the_logger() -> None:
    stream = io.StringIO()
    configure("info", "text", stream)
    logging.getLogger("tandem.hub").info("listening on %s", "tcp://127.0.0.1:5555")
    logging.getLogger("tandem.hub").debug("not shown at info")
    line = stream.getvalue().strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} INFO    tandem\.hub: listening on tcp://127\.0\.0\.1:5555",
                        line), line  # fmt: skip


def test_json_lines_parse_and_keep_extras_and_tracebacks() -> None:
    stream = io.StringIO()
    configure("warning", "json", stream)
    log = logging.getLogger("tandem.edge")
    log.info("below the level")
    log.warning("hub %s unreachable", "tcp://hub:5555", extra={"device": "cam-01"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["message"] for e in entries] == ["hub tcp://hub:5555 unreachable", "failed"]
    assert entries[0]["level"] == "warning" and entries[0]["logger"] == "tandem.edge"
    assert entries[0]["device"] == "cam-01" and re.fullmatch(r"\d{4}-.*T.*\.\d{3}Z", entries[0]["ts"])
    assert "RuntimeError: boom" in entries[1]["exc"]


def test_bad_level_or_format_is_named() -> None:
    with pytest.raises(ValueError, match="log level 'loud': expected one of debug, info, warning, error"):
        configure("loud")
    with pytest.raises(ValueError, match="log format 'xml': expected text or json"):
        configure("info", "xml")
