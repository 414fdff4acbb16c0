"""Kubernetes resource quantities (``500m``, ``2``, ``8Gi``, ``1G``) as numbers."""

from __future__ import annotations

import re
from decimal import Decimal

_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9]+|[a-zA-Z]*)$")


def parse_quantity(value: int | float | str) -> Decimal:
    """The quantity's value in base units (cores, bytes)."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, suffix = match.groups()
    if suffix in _SUFFIX:  # first: "E" and "Ei" are suffixes, not exponents
        return Decimal(number) * _SUFFIX[suffix]
    if suffix[:1] in ("e", "E") and suffix[1:].lstrip("+-").isdigit():
        try:
            return Decimal(number) * Decimal(10) ** int(suffix[1:])
        except ArithmeticError:  # decimal.Overflow: "1e999999999"
            raise ValueError(f"{value!r} is out of range") from None
    raise ValueError(f"{value!r} has an unknown suffix {suffix!r}")
