# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""``brevitas_dmx_llm``: Brevitas's ``brevitas_ptq_llm`` plus a ``--dmx`` group.

Without ``--dmx`` the command is ``brevitas_ptq_llm`` (same parser, same YAML ``--config``).
With it, every Linear layer but the LM head gets a learnable MX format (weights and inputs, MX
blocks of 32), the offsets train under the bit budget, the formats are projected exactly onto
the budget, the model is finalized to fixed Brevitas MX quantizers and evaluated.

The parts: ``validate`` (pure checks, returning a frozen ``RunPlan``), ``methods`` (one class
per ``--dmx-method`` behind ``register_method``), ``stages`` (the run), ``cache``, ``training``,
``rotation``, ``record`` (``RunRecord``, metrics.json), ``report``, ``deploy``, ``inputs``
(what a sweep shares) and ``main`` (entry points and signals).
"""

import warnings

# Brevitas warns at import that an optional CUDA kernel is absent: noise before every message.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")

from brevitas_dmx.console import busy_machine_note  # noqa: E402
from brevitas_dmx.console import log_to_console  # noqa: E402
from brevitas_dmx.llm.inputs import RunInputs  # noqa: E402
from brevitas_dmx.llm.main import interruption_note  # noqa: E402
from brevitas_dmx.llm.main import main  # noqa: E402
from brevitas_dmx.llm.main import parse  # noqa: E402
from brevitas_dmx.llm.main import run  # noqa: E402
from brevitas_dmx.llm.methods import Method  # noqa: E402
from brevitas_dmx.llm.methods import register_method  # noqa: E402
from brevitas_dmx.llm.plan import RunPlan  # noqa: E402
from brevitas_dmx.llm.plan import UsageError  # noqa: E402
from brevitas_dmx.llm.record import RunRecord  # noqa: E402
from brevitas_dmx.llm.record import SCHEMA_VERSION  # noqa: E402
from brevitas_dmx.llm.report import written_summary as _written_summary  # noqa: E402
from brevitas_dmx.llm.rotation import rotate  # noqa: E402
from brevitas_dmx.llm.validate import run_ladder  # noqa: E402
from brevitas_dmx.llm.validate import validate  # noqa: E402
from brevitas_dmx.llm_args import build_parser  # noqa: E402

__all__ = [
    "busy_machine_note",
    "build_parser",
    "interruption_note",
    "log_to_console",
    "main",
    "Method",
    "parse",
    "register_method",
    "rotate",
    "run",
    "run_ladder",
    "RunPlan",
    "RunRecord",
    "SCHEMA_VERSION",
    "RunInputs",
    "UsageError",
    "validate",
    "_written_summary"
]
