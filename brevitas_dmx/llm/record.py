# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""What one run measured, typed: ``RunRecord`` is written as the run folder's metrics.json and
as one line of the results file (a subset), and read back by the Pareto report.

The JSON keeps its flat shape (``uniform_mxfp4_e2m1_ppl`` and the like) and carries
``schema_version``; reading is tolerant of files written before the version existed. A record
also reads like the dict it was (``record["quant_ppl"]``, ``record.get("seed")``)."""

from dataclasses import dataclass
from dataclasses import field
from dataclasses import fields
import json
from typing import Any, Dict, List, Optional

# metrics.json / results.jsonl layout: 1 for files without a version.
SCHEMA_VERSION = 2
UNIFORM_PREFIX = "uniform_"
UNIFORM_SUFFIX = "_ppl"

# Fields every run writes, even where their value is None; the others appear once set.
_ALWAYS = (
    "model",
    "dataset",
    "seqlen",
    "method",
    "target_bits",
    "ladder",
    "ladder_auto",
    "rounding",
    "average",
    "budget_with_scales",
    "rotation",
    "rotation_time_s",
    "eval_windows",
    "eval_fingerprint")

# The keys of a results-file line (with the run's label, seed and output folder).
RESULT_KEYS = (
    "model",
    "dataset",
    "method",
    "ladder",
    "ladder_auto",
    "target_bits",
    "average",
    "budget_with_scales",
    "float_ppl",
    "quant_ppl",
    "gap_closed",
    "weight_rounding",
    "accuracy",
    "bits",
    "format_counts",
    "search_time_s",
    "zero_shot_time_s",
    "total_time_s",
    "device",
    "retargeted_from",
    "retargeted_steps",
    "init",
    "init_offset",
    "rotation",
    "eval_windows",
    "eval_fingerprint",
    "window_nll",
    "texts",
    "label",
    "seed",
    "seqlen",
    "nsamples",
    "steps",
    "train_settled_steps",
    "train_lr",
    "train_momentum",
    "train_lr_schedule",
    "regularizer",
    "rounding",
    "output",
    "finished")


@dataclass
class RunRecord:
    """One run's settings and measurements (None: not measured by this run)."""
    model: Optional[str] = None
    dataset: Optional[str] = None
    seqlen: Optional[int] = None
    method: Optional[str] = None  # the method's label: "dmx", "fisher", "map:<file>", ...
    target_bits: Optional[float] = None
    ladder: Optional[str] = None
    ladder_auto: bool = False
    rounding: Optional[str] = None
    average: Optional[str] = None
    budget_with_scales: Optional[bool] = None
    rotation: Optional[str] = None
    rotation_time_s: Optional[float] = None
    eval_windows: Optional[int] = None
    eval_fingerprint: Optional[str] = None
    float_ppl: Optional[float] = None
    quant_ppl: Optional[float] = None
    window_nll: Optional[List[float]] = None
    # each uniform baseline's perplexity by its key stem, e.g. "mxfp4_e2m1"
    uniform: Dict[str, float] = field(default_factory=dict)
    search_time_s: Optional[float] = None
    init: Optional[str] = None
    init_offset: Optional[float] = None  # --dmx-init budget: where every offset started
    retargeted_from: Optional[str] = None
    retargeted_steps: Optional[int] = None
    parallelism: Optional[str] = None
    train_time_s: Optional[float] = None
    train_steps: Optional[int] = None
    train_grad_accum: Optional[int] = None
    train_settled_steps: Optional[int] = None  # steps that skipped the passes (settled)
    train_lr: Optional[float] = None
    train_momentum: Optional[float] = None
    train_lr_schedule: Optional[str] = None
    learned_avg_bits: Optional[float] = None
    lowered_offsets: Optional[int] = None
    accuracy: Optional[Dict[str, Dict]] = None
    zero_shot_time_s: Optional[float] = None
    avg_bits: Optional[float] = None
    avg_bits_with_scales: Optional[float] = None
    budget_binds: Optional[str] = None
    bits: Optional[Dict[str, float]] = None
    format_counts: Optional[Dict[str, int]] = None
    gap_closed: Optional[float] = None
    # --gptq and its kin: the optimizers, their timings, the round-to-nearest scores they
    # started from and the paired ratio to them (quant_ppl is the optimized model's)
    weight_rounding: Optional[Dict[str, Any]] = None
    # --dmx-eval-datasets: per text, its windows, perplexities and paired ratios (``texts``)
    texts: Optional[Dict[str, Dict]] = None
    packed_weight_bytes: Optional[int] = None
    peak_mem_bytes: Optional[int] = None
    device: Optional[str] = None
    total_time_s: Optional[float] = None
    # a results-file line's own fields
    label: Optional[str] = None
    seed: Optional[int] = None
    nsamples: Optional[int] = None
    steps: Optional[int] = None
    regularizer: Optional[str] = None
    output: Optional[str] = None
    finished: Optional[str] = None
    # keys this version does not name (the processes' summary, newer files' additions)
    extras: Dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @staticmethod
    def uniform_key(stem: str) -> str:
        return f"{UNIFORM_PREFIX}{stem}{UNIFORM_SUFFIX}"

    def to_json(self) -> Dict[str, Any]:
        """The flat metrics.json dict: fields in ``_ALWAYS`` always, the others once set."""
        out = {}
        for spec in fields(self):
            if spec.name in ("uniform", "extras"):
                continue
            value = getattr(self, spec.name)
            if value is not None or spec.name in _ALWAYS:
                out[spec.name] = value
        for stem, ppl in self.uniform.items():
            out[self.uniform_key(stem)] = ppl
        out.update(self.extras)
        return out

    def result_line(self) -> Dict[str, Any]:
        """The results-file line: ``RESULT_KEYS``, each present (None where not measured)."""
        flat = self.to_json()
        line = {key: flat.get(key) for key in RESULT_KEYS}
        line["schema_version"] = self.schema_version
        return line

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "RunRecord":
        """A record from a metrics.json dict or a results line, of any schema version."""
        names = {spec.name for spec in fields(cls)} - {"uniform", "extras", "schema_version"}
        record = cls(schema_version=int(data.get("schema_version", 1)))
        for key, value in data.items():
            if key in names:
                setattr(record, key, value)
            elif key.startswith(UNIFORM_PREFIX) and key.endswith(UNIFORM_SUFFIX):
                record.uniform[key[len(UNIFORM_PREFIX):-len(UNIFORM_SUFFIX)]] = value
            elif key != "schema_version":
                record.extras[key] = value
        return record

    @classmethod
    def read(cls, path: str) -> "RunRecord":
        with open(path) as f:
            return cls.from_json(json.load(f))

    def __getitem__(self, key: str):
        """A field by its JSON key (None where not measured); a KeyError for a key the record
        neither names nor holds."""
        if key in _FIELDS:
            return getattr(self, key)
        flat = self.to_json()
        if key not in flat:
            raise KeyError(key)
        return flat[key]

    def __contains__(self, key: str) -> bool:
        return key in self.to_json()

    def get(self, key: str, default=None):
        value = self.to_json().get(key)
        return default if value is None else value

    def keys(self):
        return self.to_json().keys()


_FIELDS = {spec.name for spec in fields(RunRecord)} - {"uniform", "extras"}
