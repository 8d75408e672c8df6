"""Logging for the CLI, set up only once something logs: a plan on local files never imports
``logging``. Plugins take their logger from `get_logger`, which applies the CLI's settings."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["configure", "get_logger"]

_debug: bool | None = None  # what the CLI asked for; None: not the CLI (a library user's logging)
_done = False


def configure(debug: bool) -> None:
    """Called by the CLI: ``--debug`` logs everything, otherwise warnings, as ``level: message``."""
    global _debug
    _debug = debug
    if debug or "logging" in sys.modules:
        _setup()


def _setup() -> None:
    global _done
    if _done or _debug is None:
        return
    import logging

    class _Formatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"{record.levelname.lower()}: {record.getMessage()}"

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    logging.basicConfig(level=logging.DEBUG if _debug else logging.WARNING, handlers=[handler])
    _done = True


def get_logger(name: str) -> Any:
    import logging

    _setup()
    return logging.getLogger(name)
