# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The command's console: ``[dMX] ...`` progress lines, and the advice for a busy machine."""

import logging
import sys
from typing import Optional

from brevitas_dmx import distributed


class _StdoutHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stdout`` is when a record is written (a test or a
    notebook may have replaced it since the handler was made)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


class _ConsoleFormatter(logging.Formatter):
    """``[dMX] message``, or ``[pareto] message`` for the sweep's own messages."""

    def format(self, record: logging.LogRecord) -> str:
        tag = "pareto" if record.name == "brevitas_dmx.pareto" else "dMX"
        return f"[{tag}] {super().format(record)}"


def log_to_console() -> None:
    """The package's progress messages on standard output, as ``[dMX] ...`` lines: rank 0's
    only under several processes (the others' warnings still show). Called once per
    process by the commands; a library user configures ``logging`` as they like."""
    package = logging.getLogger("brevitas_dmx")
    package.setLevel(logging.INFO if distributed.is_main() else logging.WARNING)
    if not any(isinstance(h.formatter, _ConsoleFormatter) for h in package.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(_ConsoleFormatter())
        package.addHandler(handler)
        package.propagate = False


def busy_machine_note(load: float, cores: int, threads: int, environ) -> Optional[str]:
    """Advice for a machine that other jobs already keep busy, where PyTorch would still start a
    thread per core: its threads then spin against the other jobs' (measured: a SmolLM2 step
    took 10x longer than with one thread). None where the advice does not apply."""
    if "OMP_NUM_THREADS" in environ or threads <= 1 or load < cores / 2:
        return None
    return (
        f"this machine is busy (load {load:.1f} on {cores} cores) and PyTorch runs "
        f"{threads} threads: if the run is slow, start it again with OMP_NUM_THREADS=1")
