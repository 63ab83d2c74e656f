"""The shapes change language: two scenes, one change between them, captioned.

After CLEVR-Change (Park et al., 2019). Every example is generated from
`np.random.default_rng([seed, index])`. The *before* scene is a
`vlm.datasets.shapes.scene` scene of 1-3 objects; the *after* scene differs
from it by one change, drawn uniformly among the types the scene allows:

    none         nothing changes
    moved        an object moves so that its relation to another one (the
                 anchor) changes; needs 2 objects or more
    appeared     a new object, its (size, colour, shape) unused, is placed;
                 needs fewer than 3 objects
    disappeared  an object is removed; needs 2 objects or more, so the after
                 scene is never empty
    color        an object takes a colour that no object of its size and
                 shape has

Objects keep the placement rules of `vlm.datasets.shapes.scene` (no overlap, a
clear dominant axis per pair) in both scenes. Two distractors keep pixel differencing
from solving the task: every object the change leaves alone is nudged by up to
`JITTER` of the image size (at least one pixel) per axis wherever the rules and
all of its relations still hold, and the after image is drawn with a new
background, tint, colour jitter and noise.

Reference captions follow a small grammar (lowercase, no punctuation; the
words are `vlm.datasets.shapes.vocabulary`'s):

    object := SIZE COLOR SHAPE                      e.g. "small red circle"
    none:        "nothing changed" | "no change" | "the scene is the same"
    moved:       "the" object MOVED REL "the" object
    appeared:    ("a" | "a new") object ("appeared" | "was added")
    disappeared: "the" object ("disappeared" | "is gone" | "was removed")
    color:       "the" object ("turned" | "became" | "changed to") COLOR
    MOVED  := "moved" | "was moved" | "is now"

REL is a wording of the moved object's new relation to the anchor (see
`RELATION_PHRASES`), e.g. "the small red circle moved to the left of the large
blue square". Every change has 3 wordings or more; an example keeps 3-5 of
them. `canonical_change` writes a change as one string and
`vlm.metrics.change.parse_change_caption` reads a caption back into it:

    "none"
    "moved|small red circle|left of|large blue square"   object, new relation, anchor
    "appeared|large green triangle"
    "disappeared|small red circle"
    "color|small red circle|blue"                        object (old colour), new colour

`vlm.datasets.shapes.builders.ShapesChange` writes the examples as a TFDS
dataset.
"""

import numpy as np

from vlm.datasets.shapes.scene import ALL_TRIPLES
from vlm.datasets.shapes.scene import generate_scene
from vlm.datasets.shapes.scene import margin
from vlm.datasets.shapes.scene import place
from vlm.datasets.shapes.scene import placement_ok
from vlm.datasets.shapes.scene import render_scene
from vlm.datasets.shapes.scene import scene_features
from vlm.datasets.shapes.scene import triple
from vlm.datasets.shapes.vocabulary import APPEARED_ARTICLES
from vlm.datasets.shapes.vocabulary import CHANGE_TYPES
from vlm.datasets.shapes.vocabulary import CHANGE_VERBS
from vlm.datasets.shapes.vocabulary import COLORS
from vlm.datasets.shapes.vocabulary import NO_CHANGE_CAPTIONS
from vlm.datasets.shapes.vocabulary import RELATION_PHRASES
from vlm.datasets.shapes.vocabulary import RELATIONS
from vlm.datasets.shapes.vocabulary import dominant_relation

# Largest nudge of an unchanged object per axis, as a fraction of the image size.
JITTER = 0.02
# Random positions tried per placement before giving up on it.
_PLACEMENT_TRIES = 200


def _others(objects, i):
    """Indices of all objects but the `i`-th."""
    return [k for k in range(len(objects)) if k != i]


def _move(objects, rng, image_size):
    """One object moved so that its dominant relation to another one changes."""
    pairs = [(i, j) for i in range(len(objects)) for j in range(len(objects)) if i != j]
    for p in rng.permutation(len(pairs)):
        i, j = pairs[p]
        mover, anchor = objects[i], objects[j]
        others = objects[:i] + objects[i + 1:]
        targets = [r for r in RELATIONS if r != dominant_relation(mover, anchor)]
        # A relation drawn first, then a place for it, so the new relations come out balanced.
        for t in rng.permutation(len(targets)):
            relation = targets[t]
            moved = place(mover, others, rng, image_size, tries=_PLACEMENT_TRIES,
                          accept=lambda c, r=relation: dominant_relation(c, anchor) == r)
            if moved is not None:
                change = {"object": triple(mover), "relation": relation,
                          "anchor": triple(anchor)}
                return objects[:i] + [moved] + objects[i + 1:], change, _others(objects, i)
    return None


def _appear(objects, rng, image_size):
    """A new object of an unused (size, colour, shape) placed among the others."""
    used = {triple(obj) for obj in objects}
    free = [triple for triple in ALL_TRIPLES if triple not in used]
    size, color, shape = free[int(rng.integers(len(free)))]
    new = place({"shape": shape, "color": color, "size": size}, objects, rng, image_size,
                tries=_PLACEMENT_TRIES)
    if new is None:
        return None
    return objects + [new], {"object": triple(new)}, list(range(len(objects)))


def _disappear(objects, rng, image_size):
    """One object removed."""
    del image_size
    i = int(rng.integers(len(objects)))
    rest = objects[:i] + objects[i + 1:]
    return rest, {"object": triple(objects[i])}, list(range(len(rest)))


def _recolor(objects, rng, image_size):
    """One object in a colour no object of its size and shape has."""
    del image_size
    i = int(rng.integers(len(objects)))
    obj, used = objects[i], {triple(other) for other in objects}
    free = [c for c in COLORS if (obj["size"], c, obj["shape"]) not in used]
    new_color = free[int(rng.integers(len(free)))]
    after = objects[:i] + [{**obj, "color": new_color}] + objects[i + 1:]
    return after, {"object": triple(obj), "new_color": new_color}, _others(objects, i)


def _no_change(objects, rng, image_size):
    """Nothing changed."""
    del rng, image_size
    return list(objects), {}, list(range(len(objects)))


# Per change type: the least and most objects the before scene may have, and the change:
# `(objects, rng, image_size) -> (after objects, change fields, indices of the untouched
# after objects)`, or None where it finds no place.
_CHANGES = {
    "none": (1, 3, _no_change),
    "moved": (2, 3, _move),
    "appeared": (1, 2, _appear),
    "disappeared": (2, 3, _disappear),
    "color": (1, 3, _recolor),
}


def _jitter(objects, indices, rng, image_size):
    """Nudges `objects[i]` for `i` in `indices` (in place) where rules and relations hold."""
    reach = max(1, int(round(JITTER * image_size)))
    for i in indices:
        obj = objects[i]
        others = objects[:i] + objects[i + 1:]
        dx, dy = rng.integers(-reach, reach + 1, size=2)
        candidate = {**obj, "x": obj["x"] + float(dx), "y": obj["y"] + float(dy)}
        least = margin(obj["size"], image_size)
        inside = all(least <= candidate[axis] < image_size - least for axis in ("x", "y"))
        if (inside and placement_ok(candidate, others, image_size)
                and all(dominant_relation(candidate, other) == dominant_relation(obj, other)
                        for other in others)):
            objects[i] = candidate


def generate_change(rng, image_size=64):
    """Samples a before scene, one change of it and the after scene.

    Args:
        rng: `np.random.Generator`.
        image_size: int, side of the square images in pixels.

    Returns:
        `(before, after, change)`: `before` and `after` are scene graphs
        `{"objects": [...]}` as from `generate_scene` (an object keeps its
        index unless one disappears before it; an appeared object comes
        last), and `change` is `{"type": str, "object": (size,
        color, shape) or None, "relation": str or None, "anchor": (size,
        color, shape) or None, "new_color": str or None}`. `object` is the
        changed object as it was before (None for "none"); `relation`, its
        new relation to `anchor`, is set for "moved" only, `new_color` for
        "color" only.
    """
    before = generate_scene(rng, image_size)
    objects = before["objects"]
    kinds = [kind for kind, (least, most, _) in _CHANGES.items()
             if least <= len(objects) <= most]
    while True:  # a type that finds no place (rare) is dropped; "none" always succeeds
        kind = kinds[int(rng.integers(len(kinds)))]
        result = _CHANGES[kind][2](objects, rng, image_size)
        if result is not None:
            break
        kinds.remove(kind)
    after, fields, unchanged = result
    _jitter(after, unchanged, rng, image_size)
    change = {"type": kind, "object": None, "relation": None, "anchor": None, "new_color": None}
    change.update(fields)
    return before, {"objects": after}, change


def _wordings(change):
    """Every reference caption of a change, in the grammar of the module docstring."""
    kind = change["type"]
    if kind == "none":
        return list(NO_CHANGE_CAPTIONS)
    subject = " ".join(change["object"])
    verbs = CHANGE_VERBS[kind]
    if kind == "moved":
        anchor = " ".join(change["anchor"])
        return [f"the {subject} {verb} {phrase} the {anchor}"
                for verb in verbs for phrase in RELATION_PHRASES[change["relation"]]]
    if kind == "appeared":
        return [f"{article} {subject} {verb}" for article in APPEARED_ARTICLES for verb in verbs]
    if kind == "color":
        return [f"the {subject} {verb} {change['new_color']}" for verb in verbs]
    return [f"the {subject} {verb}" for verb in verbs]


def change_captions(change, rng, num_captions):
    """Distinct reference captions of a change, in the grammar of the module docstring.

    Args:
        change: dict as returned by `generate_change`.
        rng: `np.random.Generator` choosing the wordings.
        num_captions: int, how many distinct captions to aim for.

    Returns:
        list of `num_captions` distinct strings in random order, or fewer
        where the change has fewer wordings (at least 3 always).
    """
    wordings = _wordings(change)
    return [wordings[i] for i in rng.permutation(len(wordings))[:num_captions]]


def _object_words(words):
    """`"small red circle"` from `("small", "red", "circle")`; missing (None) words are left out."""
    return " ".join(word for word in (words or ()) if word is not None)


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


def generate_change_examples(num_examples, seed, image_size=64):
    """Yields examples `0 .. num_examples - 1`, each determined by `(seed, index)` alone.

    Args:
        num_examples: int, number of examples (image pairs).
        seed: int, seed of the example stream.
        image_size: int, side of the square images in pixels.

    Yields:
        dicts `{"image_id": int, "images": uint8 (2, S, S, 3) [before,
        after], "captions": list of 3-5 str, "change": str (canonical),
        "change_type": str, "before", "after": objects dicts as in
        `vlm.datasets.shapes.captions.generate_examples`}`.
    """
    for index in range(num_examples):
        rng = np.random.default_rng([seed, index])
        before, after, change = generate_change(rng, image_size)
        # Two renderings in a row: new background, tint, colour jitter and noise for the after one.
        images = np.stack([render_scene(before, rng, image_size),
                           render_scene(after, rng, image_size)])
        captions = change_captions(change, rng, int(rng.integers(3, 6)))
        yield {"image_id": index, "images": images, "captions": captions,
               "change": canonical_change(change), "change_type": change["type"],
               "before": scene_features(before), "after": scene_features(after)}
