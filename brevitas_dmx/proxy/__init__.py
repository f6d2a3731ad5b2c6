# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause

from .dmx import dmx_quant_of
from .dmx import DMXActQuantProxyFromInjector
from .dmx import DMXWeightQuantProxyFromInjector
from .dmx import find_shared_offset
