# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The OCP MX element formats and the format ladders a learnable offset moves along."""

from dataclasses import dataclass
from typing import Dict, Tuple

E8M0_SCALE_BITS = 8


@dataclass(frozen=True)
class ElementFormat:
    """One OCP MX element format, e.g. E4M3 (MXFP8)."""
    name: str
    exponent_bits: int
    mantissa_bits: int

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def mx_name(self) -> str:
        return f"mxfp{self.bits}"


FORMATS: Dict[str, ElementFormat] = {
    f.name: f for f in (
        ElementFormat("e2m1", 2, 1),
        ElementFormat("e2m3", 2, 3),
        ElementFormat("e3m2", 3, 2),
        ElementFormat("e4m3", 4, 3),
        ElementFormat("e5m2", 5, 2),)
}

# Unambiguous MX names accepted wherever a format name is (MXFP6 has two element formats).
FORMAT_ALIASES = {"mxfp4": "e2m1", "mxfp8": "e4m3"}


def element_format(name: str) -> ElementFormat:
    """Looks up a format by name ('e2m1', 'E4M3', 'mxfp4', ...) with an error that lists them."""
    key = str(name).strip().lower()
    key = FORMAT_ALIASES.get(key, key)
    if key not in FORMATS:
        known = ", ".join(list(FORMATS) + list(FORMAT_ALIASES))
        raise ValueError(f"Unknown MX element format {name!r} (known formats: {known})")
    return FORMATS[key]


def format_from_bits(exponent_bits: float, mantissa_bits: float) -> ElementFormat:
    """The OCP format with these (integer) widths, or a ValueError naming them."""
    for fmt in FORMATS.values():
        if fmt.exponent_bits == exponent_bits and fmt.mantissa_bits == mantissa_bits:
            return fmt
    raise ValueError(
        f"E{exponent_bits}M{mantissa_bits} is not an OCP MX element format; "
        f"known formats: {', '.join(FORMATS)}.")


@dataclass(frozen=True)
class Ladder:
    """A path through the MX formats: E(e0 + de*beta) M(m0 + dm*beta), beta in [0, span].

    ``kind`` is how the raw offset becomes beta (section 3 of the method): ``"sigmoid"`` ends on
    the two end formats, ``"staircase"`` on every integer beta.
    """
    name: str
    exponent_base: float
    exponent_slope: float
    mantissa_base: float
    mantissa_slope: float
    span: int
    kind: str

    def widths(self, beta):
        """(exponent_bits, mantissa_bits) at offset ``beta`` (a float or a tensor)."""
        return (
            self.exponent_base + self.exponent_slope * beta,
            self.mantissa_base + self.mantissa_slope * beta)

    def bits(self, beta):
        e, m = self.widths(beta)
        return 1 + e + m

    @property
    def discrete_betas(self) -> Tuple[int, ...]:
        return (0, self.span) if self.kind == "sigmoid" else tuple(range(self.span + 1))

    @property
    def formats(self) -> Tuple[ElementFormat, ...]:
        """The hardware formats a layer on this ladder can end on, cheapest first."""
        return tuple(format_from_bits(*self.widths(b)) for b in self.discrete_betas)

    @property
    def min_bits(self) -> int:
        return self.formats[0].bits

    @property
    def max_bits(self) -> int:
        return self.formats[-1].bits


LADDERS: Dict[str, Ladder] = {
    l.name: l for l in (
        Ladder("mxfp8-mxfp4", 2.0, 1.0, 1.0, 1.0, 2, "sigmoid"),
        Ladder("mxfp6-mxfp4", 2.0, 0.0, 1.0, 1.0, 2, "sigmoid"),
        Ladder("mxfp8-mxfp6-mxfp4", 2.0, 1.0, 1.0, 1.0, 2, "staircase"),)
}


def ladder(name: str) -> Ladder:
    if name not in LADDERS:
        raise ValueError(f"Unknown dMX ladder {name!r}; choose one of: {', '.join(LADDERS)}.")
    return LADDERS[name]
