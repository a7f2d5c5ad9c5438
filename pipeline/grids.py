"""Square token grids: the side g of a g x g grid of patches or attention tokens, from its token count.

One derivation for every place that meets a flat token axis (stage A's layers, R, P, the surgery
position embeddings, the adapter's features), checked: a count that is no square is an error, not a
rounded side.
"""

from __future__ import annotations

import math


def square_side(tokens: int, what: str = "tokens") -> int:
    """g with g * g == `tokens`; ValueError naming `what` otherwise."""
    side = math.isqrt(int(tokens))
    if side * side != tokens:
        raise ValueError(f"{tokens} {what} do not form a square grid")
    return side
