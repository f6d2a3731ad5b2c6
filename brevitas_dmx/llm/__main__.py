# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""``python -m brevitas_dmx.llm``."""

import sys

from brevitas_dmx.llm import main

sys.exit(main())
