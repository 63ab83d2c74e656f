"""Reference checks of shapes scenes, written apart from the generator's own code."""

from vlm.metrics.grounded import relation_holds


def triple(obj):
    return (obj["size"], obj["color"], obj["shape"])


def dominant(a, b):
    """The relation of `a` to `b` along the axis where their centres differ most."""
    horizontal = abs(a["x"] - b["x"]) > abs(a["y"] - b["y"])
    candidates = ("left of", "right of") if horizontal else ("above", "below")
    (relation,) = [r for r in candidates if relation_holds(a, r, b)]
    return relation
