"""Words and canonical form of the shapes change language, shared by its generator and metrics.

`vlm.data.shapes_change` writes change captions with these words and
`vlm.metrics.change` reads them back; keeping them here, as `vlm.scene_vocab`
does for scenes, lets the metrics run without importing the data package (and
TensorFlow).

A change is a dict `{"type", "object", "relation", "anchor", "new_color"}`
(see `vlm.data.shapes_change.generate_change`); `canonical_change` writes it
as one string:

    "none"
    "moved|small red circle|left of|large blue square"   object, new relation, anchor
    "appeared|large green triangle"
    "disappeared|small red circle"
    "color|small red circle|blue"                        object (old colour), new colour
"""

CHANGE_TYPES = ("none", "moved", "appeared", "disappeared", "color")
# The whole caption of an unchanged scene.
NO_CHANGE_CAPTIONS = ("nothing changed", "no change", "the scene is the same")
# The words after the changed object, per change type: "the small red circle
# moved left of ...", "... was added", "... is gone", "... turned blue".
CHANGE_VERBS = {
    "moved": ("moved", "was moved", "is now"),
    "appeared": ("appeared", "was added"),
    "disappeared": ("disappeared", "is gone", "was removed"),
    "color": ("turned", "became", "changed to"),
}
# The articles of an appeared object (the other changes name a known one: "the").
APPEARED_ARTICLES = ("a", "a new")


def _object_words(triple):
    """`"small red circle"` from `("small", "red", "circle")`; missing (None) words are left out."""
    return " ".join(word for word in (triple or ()) if word is not None)


def canonical_change(change):
    """Writes a change as one canonical string (formats in the module docstring).

    Args:
        change: dict with `"type"` (one of `CHANGE_TYPES`) and, as the type
            needs, `"object"` and `"anchor"` `(size, color, shape)` triples,
            `"relation"` and `"new_color"` strings. A None field, or None
            words in a triple, are written as nothing (a parsed caption may
            leave them out).

    Returns:
        str, e.g. `"moved|small red circle|left of|large blue square"`.
    """
    kind = change["type"]
    if kind not in CHANGE_TYPES:
        raise ValueError(f"`type` must be one of {CHANGE_TYPES}. Received: type={kind!r}")
    if kind == "none":
        return "none"
    fields = [kind, _object_words(change.get("object"))]
    if kind == "moved":
        fields += [change.get("relation") or "", _object_words(change.get("anchor"))]
    elif kind == "color":
        fields.append(change.get("new_color") or "")
    return "|".join(fields)
