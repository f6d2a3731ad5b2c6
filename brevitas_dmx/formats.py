# Copyright (C) 2026, brevitas-dmx contributors. All rights reserved.
# SPDX-License-Identifier: BSD-3-Clause
"""The OCP MX element formats and the format ladders a learnable offset moves along."""

from dataclasses import dataclass
from functools import cached_property
from typing import Dict, Optional, Tuple

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


def _segment_length(low: ElementFormat, high: ElementFormat) -> int:
    """The offset length of the path from ``low`` to ``high``: the larger width change, so that a
    width grows by at most one bit per unit of offset (E(2+b)M(1+b) from E2M1 to E4M3 is two)."""
    return max(
        abs(high.exponent_bits - low.exponent_bits), abs(high.mantissa_bits - low.mantissa_bits))


@dataclass(frozen=True)
class Ladder:
    """A chain of MX formats, cheapest first, joined by a continuous path along one offset beta.

    Format ``i`` of the chain sits at ``beta = knots[i]``; between two consecutive formats the
    exponent and mantissa widths move linearly (E2M1 -> E2M3 -> E4M3: the mantissa grows first,
    then the exponent), so the path is exact at every format and differentiable in between. A
    segment is as long as its larger width change (``_segment_length``), which makes the paper's
    ladder E(2+b)M(1+b), b in [0, 2], the two-format chain E2M1, E4M3.
    """
    name: str
    formats: Tuple[ElementFormat, ...]

    @cached_property
    def knots(self) -> Tuple[int, ...]:
        """The offset of each format of the chain (the discrete offsets a layer may end on)."""
        knots = [0]
        for low, high in zip(self.formats, self.formats[1:]):
            knots.append(knots[-1] + _segment_length(low, high))
        return tuple(knots)

    @cached_property
    def segments(self) -> Tuple[Tuple[int, int], ...]:
        """(start, length) in offset of each path between two consecutive formats."""
        knots = self.knots
        return tuple((a, b - a) for a, b in zip(knots, knots[1:]))

    @property
    def span(self) -> int:
        return self.knots[-1]

    @property
    def discrete_betas(self) -> Tuple[int, ...]:
        return self.knots

    @cached_property
    def _slopes(self) -> Optional[Tuple[float, float]]:
        """(exponent, mantissa) change per unit of offset if the chain is one straight line."""
        slopes = {
            ((h.exponent_bits - l.exponent_bits) / n, (h.mantissa_bits - l.mantissa_bits) / n)
            for (l, h), (_, n) in zip(zip(self.formats, self.formats[1:]), self.segments)
        }
        return slopes.pop() if len(slopes) == 1 else None

    def segment_at(self, beta: float) -> int:
        """The index of the segment that holds offset ``beta`` (a knot starts its segment; the
        last knot and beyond belong to the last segment, offsets below 0 to the first)."""
        for index, (start, length) in enumerate(self.segments):
            if beta < start + length:
                return index
        return len(self.segments) - 1

    def widths(self, beta):
        """(exponent_bits, mantissa_bits) at offset ``beta`` (a float or a tensor)."""
        first = self.formats[0]
        slopes = self._slopes
        if slopes is not None:
            return (first.exponent_bits + slopes[0] * beta, first.mantissa_bits + slopes[1] * beta)
        e, m = first.exponent_bits, first.mantissa_bits
        for (start, length), low, high in zip(self.segments, self.formats, self.formats[1:]):
            # How far along this segment beta is, 0 to 1; exact at the knots.
            if hasattr(beta, "clamp"):  # a tensor (this module imports no torch)
                t = ((beta - start) / length).clamp(0, 1)
            else:
                t = min(max((beta - start) / length, 0.0), 1.0)
            e = e + (high.exponent_bits - low.exponent_bits) * t
            m = m + (high.mantissa_bits - low.mantissa_bits) * t
        return e, m

    def bits(self, beta):
        e, m = self.widths(beta)
        return 1 + e + m

    @property
    def min_bits(self) -> int:
        return self.formats[0].bits

    @property
    def max_bits(self) -> int:
        return self.formats[-1].bits


def _chain(name: str, *formats: str) -> Ladder:
    return Ladder(name, tuple(FORMATS[f] for f in formats))


# The named ladders; any other chain is named by its formats, e.g. "e2m1,e2m3,e4m3".
LADDERS: Dict[str, Ladder] = {
    l.name: l for l in (
        _chain("mxfp8-mxfp4", "e2m1", "e4m3"),
        _chain("mxfp6-mxfp4", "e2m1", "e2m3"),
        _chain("mxfp8-mxfp6-mxfp4", "e2m1", "e3m2", "e4m3"),
        _chain("e2m1,e2m3,e4m3", "e2m1", "e2m3", "e4m3"),)
}
# The chain the default ladder is cut from: MXFP4, the better MXFP6, MXFP8.
DEFAULT_CHAIN = "e2m1,e2m3,e4m3"
# The default ladder: the two formats of DEFAULT_CHAIN around the run's target
# (``ladder_for_target``; BENCHMARKS.md, 'How good is it at each budget?').
AUTO_LADDER = "auto"
DEFAULT_LADDER = AUTO_LADDER


def ladder(name: str) -> Ladder:
    """The ladder named ``name``: one of ``LADDERS`` or a comma-separated chain of element formats
    that grows in bits, lowest first ('e2m1,e2m3,e4m3'; 'mxfp4,e2m3,mxfp8'). A chain of the
    same formats as a named ladder is that ladder. Raises a ValueError that says what to change."""
    if isinstance(name, Ladder):
        return name
    key = str(name).strip().lower()
    if key in LADDERS:
        return LADDERS[key]
    parts = [p.strip() for p in key.split(",")]
    if len(parts) < 2:
        raise ValueError(
            f"Unknown ladder {name!r}: name one of {', '.join(LADDERS)}, or a chain of two or "
            f"more MX element formats, lowest first, e.g. 'e2m1,e2m3,e4m3'")
    formats = tuple(element_format(p) for p in parts)
    for low, high in zip(formats, formats[1:]):
        if high.bits <= low.bits:
            raise ValueError(
                f"Ladder {name!r} does not grow in bits: {high.name} ({high.bits} bits) follows "
                f"{low.name} ({low.bits} bits); list the formats lowest first, one per width")
    for known in LADDERS.values():
        if known.formats == formats:
            return known
    return Ladder(",".join(f.name for f in formats), formats)


def ladder_for_target(
        target_bits: Optional[float],
        scale_bits: float = 0.0,
        chain: str = DEFAULT_CHAIN) -> Ladder:
    """The two consecutive formats of ``chain`` around ``target_bits``: the cheapest format that
    reaches the target (its bits plus ``scale_bits`` per element) and the one below it. The whole
    chain without a target. A target outside the chain gets its nearest end segment, which the
    budget check then refuses.

    Why not the whole chain: a layer's continuous format between two formats of a segment can
    beat both (E3M3 between E2M3 and E4M3 does, on SmolLM2), so training on a wide chain favours
    offsets no layer can end on (on E2M3→E4M3 alone the command therefore samples the real
    formats: ``model.rounding_for_ladder``); below the MXFP6 cost, E4M3 layers also cost two
    bits each that E2M1 layers must pay back (BENCHMARKS.md, 'How good is it at each
    budget?')."""
    full = ladder(chain)
    if target_bits is None:
        return full
    formats = full.formats
    segments = list(zip(formats, formats[1:]))
    low, high = next(
        ((lo, hi) for lo, hi in segments if target_bits <= hi.bits + scale_bits), segments[-1])
    return ladder(f"{low.name},{high.name}")
