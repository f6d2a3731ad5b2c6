# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""Plugin file for stock ``brevitas_ptq_llm``: ``--custom-quantizer PATH:dmx`` and
``--custom-trainer PATH:dmx``. It only imports the installed registrations (see
``brevitas_dmx.brevitas_plugin``), so the registered classes exist once."""

import brevitas_dmx.brevitas_plugin  # noqa: F401  (registers dmx, dmx-mxfp8, dmx6, ...)
