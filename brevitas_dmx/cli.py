# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The ``brevitas_dmx_llm`` console command.

``--help`` is answered from the parser alone (``brevitas_dmx.llm_args``, no torch), in well
under a second; the run itself (``brevitas_dmx.llm``: torch, transformers, Brevitas) is
imported only once the help is ruled out.
"""

import importlib
import sys
from typing import List, Optional
import warnings

# Brevitas warns at import that an optional CUDA kernel is absent: noise before every message.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")

from brevitas_dmx.llm_args import build_parser  # noqa: E402


def _asks_for_help(argv: List[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in argv)


def main(argv: Optional[List[str]] = None) -> int:
    """``brevitas_dmx_llm``: the help at once, else the run (``brevitas_dmx.llm.main``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _asks_for_help(argv):
        build_parser().print_help()
        return 0
    return importlib.import_module("brevitas_dmx.llm").main(argv)


def console_main() -> None:
    sys.exit(main())
