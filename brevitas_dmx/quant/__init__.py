# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause

from .dmx import *
from .fixed import fixed_mx_quantizer
from .fixed import MXFloat4e2m1Act
from .fixed import MXFloat4e2m1Weight
from .fixed import MXFloat6e2m3Act
from .fixed import MXFloat6e2m3Weight
from .fixed import MXFloat6e3m2Act
from .fixed import MXFloat6e3m2Weight
from .fixed import MXFloat8e4m3Act
from .fixed import MXFloat8e4m3Weight
from .fixed import MXFloat8e5m2Act
from .fixed import MXFloat8e5m2Weight
