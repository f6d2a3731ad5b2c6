# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""``brevitas_dmx_llm``'s entry points: parse, validate, run; errors as one line, an
interruption (Ctrl-C or SIGTERM) as the line that resumes it."""

import argparse
import gc
import os
import shlex
import signal
import sys
import threading
from typing import List, Optional

from brevitas_examples.common.parse_utils import override_defaults
from brevitas_examples.common.parse_utils import parse_args
from transformers.trainer_utils import get_last_checkpoint

from brevitas_dmx import distributed
from brevitas_dmx.console import log_to_console
from brevitas_dmx.data import DataError
from brevitas_dmx.llm.plan import CHECKPOINTS_DIR
from brevitas_dmx.llm.plan import UsageError
from brevitas_dmx.llm.stages import run_dmx
from brevitas_dmx.llm.validate import validate
from brevitas_dmx.llm_args import build_parser
from brevitas_dmx.llm_args import PROG
from brevitas_dmx.llm_args import STOCK_SEQLEN
from brevitas_dmx.loading import ModelError
from brevitas_dmx.solver.trainer import NonFiniteLossError

# The errors a run reports as one line (exit 2), not as a traceback.
REPORTED_ERRORS = (UsageError, DataError, ModelError, NonFiniteLossError, FileNotFoundError)


def parse(argv: List[str]):
    """(parser, arguments, unknown arguments, the parser's defaults before a YAML ``--config``)
    of a ``brevitas_dmx_llm`` command line, as Brevitas parses it."""
    parser = build_parser()
    defaults = {a.dest: a.default for a in parser._actions}
    args, extra_args = parse_args(parser, argv, override_defaults=override_defaults(argv))
    return parser, args, extra_args, defaults


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser, args, extra_args, defaults = parse(argv)
        if args.dmx and extra_args:  # before the other checks: a mistyped flag comes first
            raise UsageError(f"unrecognized arguments: {' '.join(extra_args)}")
        plan = validate(parser, args, defaults)
        if plan is None:
            # Brevitas's pipeline imports its ONNX export, an optional extra of a dMX run.
            from brevitas_examples.llm.main import quantize_llm
            stock = argparse.Namespace(**vars(args))
            if stock.seqlen is None:
                stock.seqlen = STOCK_SEQLEN
            quantize_llm(stock, extra_args)
            return 0
    except (UsageError, DataError, ModelError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return run(argv, plan)


def run(argv: List[str], plan) -> int:
    """A checked dMX run (``run_dmx`` of its ``RunPlan``) as a command: errors as one line, an
    interruption as the line that resumes it (``argv``, the command line, is what it repeats).
    Returns the exit code."""
    log_to_console()
    # Only the main thread may set a handler (a sweep may call this from another thread).
    catch_term = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if catch_term else None
    interrupted = None
    try:
        run_dmx(plan)
    except REPORTED_ERRORS as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:
        _restore_sigterm(catch_term, previous)  # a second SIGTERM now ends the process
        terminated = isinstance(interruption, _Terminated)
        interrupted = 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        _restore_sigterm(catch_term, previous)
    if interrupted is None:
        return 0
    # The abandoned run's progress bars close (and draw themselves once more) when it is
    # collected: collect it now, so that the note is the last line.
    gc.collect()
    if distributed.is_main():
        print(f"\n{interruption_note(argv, plan.args)}", file=sys.stderr)
    return interrupted


def interruption_note(argv: List[str], args) -> str:
    """The one line an interrupted run ends with: where its last checkpoint is and the command
    that resumes it (the same command, with ``--dmx-resume`` on its output folder), or the
    command to run again where there is nothing to resume."""
    again = f"run again: {shlex.join([PROG] + argv)}"
    if args.dmx_retarget_from is not None:  # re-projects learned offsets: nothing trains
        return f"{PROG}: interrupted; {again}"
    out_dir = args.dmx_resume or args.dmx_output
    checkpoints = os.path.join(out_dir, CHECKPOINTS_DIR)
    last = get_last_checkpoint(checkpoints) if os.path.isdir(checkpoints) else None
    if last is None:
        return f"{PROG}: interrupted before the first checkpoint in {checkpoints}; {again}"
    resume = shlex.join([PROG] + (argv if args.dmx_resume else argv + ["--dmx-resume", out_dir]))
    return f"{PROG}: interrupted; last checkpoint {last}; resume with: {resume}"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is, so that it ends like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _restore_sigterm(installed: bool, previous) -> None:
    """The SIGTERM handler found before the run (the default where it was set outside Python)."""
    if installed:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
