# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The dMX solver: regularizers, annealing callbacks, training and exact budget projection."""

from .callbacks import temperature_at
from .callbacks import TemperatureScheduleCallback
from .projection import budget_problem
from .projection import project
from .projection import project_model
from .projection import retarget
from .regularizers import HeldBudget
from .regularizers import ScalingPenalty
from .regularizers import TargetAwarePenalty
from .trainer import DMXTrainer
from .trainer import NonFiniteLossError
from .trainer import training_arguments
