"""Change caption scores: read the change a caption states, compare it with the true change.

A caption is read in the grammar that `vlm.datasets.shapes.changes` writes
reference captions in, into the canonical change string of
`vlm.datasets.shapes.changes.canonical_change` ("moved|small red circle|left of|large
blue square", "appeared|large green triangle", "none", ...). Scores compare
those strings field by field with the true ones; `moved_breakdown` sorts
the captions of "moved" changes by what they get wrong.

Pure Python and NumPy: no TensorFlow or Keras, so it runs beside any backend.

Example:

```python
change_scores(["the small red circle turned green", "a large blue square appeared"],
              ["color|small red circle|blue", "appeared|large blue square"])
# {"change_type_accuracy": 1.0, "change_object_accuracy": 1.0,
#  "exact_change_accuracy": 0.5, "num_examples": 2,
#  "exact_change_accuracy_appeared": 1.0, "exact_change_accuracy_color": 0.0}
```
"""

import re

from vlm.datasets.shapes.changes import canonical_change
from vlm.datasets.shapes.vocabulary import CHANGE_TYPES
from vlm.datasets.shapes.vocabulary import CHANGE_VERBS
from vlm.datasets.shapes.vocabulary import DEFAULT_VOCABULARY
from vlm.datasets.shapes.vocabulary import NO_CHANGE_CAPTIONS
from vlm.datasets.shapes.vocabulary import RELATIONS
from vlm.datasets.shapes.vocabulary import dominant_relation
from vlm.metrics.grounded import parse_caption

# Every phrase that names a change type, longest first so "was moved" wins over "moved".
_TYPE_PHRASES = sorted(
    [(kind, tuple(phrase.split())) for kind, phrases in CHANGE_VERBS.items() for phrase in phrases]
    + [("none", tuple(caption.split())) for caption in NO_CHANGE_CAPTIONS],
    key=lambda entry: -len(entry[1]),
)
_RELATION_TOKENS = tuple((relation, tuple(relation.split())) for relation in RELATIONS)


def _find(tokens, phrases):
    """`(position, key, length)` of the earliest of `phrases` (`(key, words)`) in `tokens`."""
    for k in range(len(tokens)):
        for key, words in phrases:
            if tuple(tokens[k:k + len(words)]) == words:
                return k, key, len(words)
    return None


def _last_mention(tokens, vocabulary):
    """The last `(size, color, shape)` mention in `tokens` (words may be None), or None."""
    mentions, _ = parse_caption(" ".join(tokens), vocabulary)
    return mentions[-1] if mentions else None


def _first_mention(tokens, vocabulary):
    mentions, _ = parse_caption(" ".join(tokens), vocabulary)
    return mentions[0] if mentions else None


def parse_change_caption(text, vocabulary=DEFAULT_VOCABULARY):
    """Reads the change a caption states, as a canonical change string.

    The earliest change phrase decides the type: a no-change caption ("nothing
    changed", "no change", "the scene is the same") or a verb of
    `vlm.datasets.shapes.vocabulary.CHANGE_VERBS` ("moved", "was moved", "is now",
    "appeared", "was added", "disappeared", "is gone", "was removed",
    "turned", "became", "changed to"). The changed object is the last mention
    before the verb; for "moved", the relation is the first one after the verb
    ("to the left of" reads as "left of") and the anchor the first mention
    after that; for "color", the new colour is the first colour word after the
    verb. Other words are ignored. A part the caption leaves out is left empty
    ("moved|small red circle||", "disappeared|red circle").

    Args:
        text: the caption, `str` or UTF-8 `bytes`; anything is accepted.
        vocabulary: `vlm.datasets.shapes.vocabulary.SceneVocabulary` with the colour, shape
            and size words.

    Returns:
        str, e.g. `"moved|small red circle|left of|large blue square"`, or None
        when the caption names no change type.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="ignore")
    tokens = re.findall(r"[a-z]+", str(text).lower())
    found = _find(tokens, _TYPE_PHRASES)
    if found is None:
        return None
    position, kind, length = found
    change = {"type": kind, "object": _last_mention(tokens[:position], vocabulary)}
    rest = tokens[position + length:]
    if kind == "moved":
        relation = _find(rest, _RELATION_TOKENS)
        if relation is not None:
            change["relation"] = relation[1]
            change["anchor"] = _first_mention(rest[relation[0] + relation[2]:], vocabulary)
    elif kind == "color":
        change["new_color"] = next((word for word in rest if word in vocabulary.colors), None)
    return canonical_change(change)


def _moved_claim(mover, relation, anchor, before, after):
    """What the claim "`mover` moved `relation` `anchor`" is, judged on the two scenes.

    Args:
        mover: the moved object's name, "size color shape" (may be "").
        relation: one of `RELATIONS`, or "" when the caption states none.
        anchor: the other object's name (may be "").
        before: the scene graph before, `{"objects": [...]}`.
        after: the scene graph after.

    Returns:
        "right" when `mover`'s dominant relation to `anchor` is `relation`
        after and was not before; "wrong_object" when either name is not an
        object of both scenes, or both name the same one; else
        "relation_unchanged_by_move" when the relation holds after but held
        already before, and "wrong_relation" when it does not hold after
        (or is not stated).
    """
    def find(scene, name):
        return next((obj for obj in scene["objects"]
                     if f"{obj['size']} {obj['color']} {obj['shape']}" == name), None)

    objects = [find(scene, name) for scene in (before, after) for name in (mover, anchor)]
    if mover == anchor or any(obj is None for obj in objects):
        return "wrong_object"
    mover_before, anchor_before, mover_after, anchor_after = objects
    if not relation or dominant_relation(mover_after, anchor_after) != relation:
        return "wrong_relation"
    if dominant_relation(mover_before, anchor_before) == relation:
        return "relation_unchanged_by_move"
    return "right"


def moved_claim_holds(mover, relation, anchor, before, after):
    """Whether "`mover` moved `relation` `anchor`" is true of the two scenes.

    True when both objects (named "size color shape") are in both scenes, are
    different objects, and `mover`'s dominant relation to `anchor` is
    `relation` after and was not before.
    """
    return _moved_claim(mover, relation, anchor, before, after) == "right"


def _exact(parsed, truth, pair=None):
    """Whether a parsed caption states the true change, as `change_scores` counts it exact.

    Args:
        parsed: `parse_change_caption`'s string, or None.
        truth: the true canonical change string.
        pair: optional `(before, after)` scenes: then a "moved" caption naming
            the moved object is also right with another anchor, when its
            claim holds (`moved_claim_holds`).

    Returns:
        bool.
    """
    if parsed == truth:
        return True
    fields, true_fields = (parsed or "").split("|"), truth.split("|")
    return (pair is not None and fields[0] == true_fields[0] == "moved"
            and fields[1] == true_fields[1] and moved_claim_holds(*fields[1:], *pair))


def _as_text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _checked(captions, changes, scenes):
    """`captions` as a list and `changes` as a list of str, after checking the lengths agree."""
    captions, changes = list(captions), [_as_text(change) for change in changes]
    if len(captions) != len(changes):
        raise ValueError(
            "`captions` and `changes` must have the same length. "
            f"Received: len(captions)={len(captions)}, len(changes)={len(changes)}"
        )
    if scenes is not None and len(scenes) != len(changes):
        raise ValueError(
            "`scenes` must have one (before, after) pair per change. "
            f"Received: len(scenes)={len(scenes)}, len(changes)={len(changes)}")
    return captions, changes


def change_scores(captions, changes, vocabulary=DEFAULT_VOCABULARY, scenes=None):
    """Scores captions against the true changes of their image pairs.

    A move can be stated against more than one object: when the small red
    circle moved, its relation to each other object may have changed, and the
    reference names one of them. With `scenes`, a "moved" caption is exactly
    right when it names the moved object and a relation to another object
    that holds after the move and did not before (`moved_claim_holds`);
    without them, only the reference's anchor counts.

    Args:
        captions: one caption per example, `str` or `bytes`.
        changes: the true canonical change strings (the `"change"` feature of
            `vlm.datasets.shapes.changes`), `str` or `bytes`.
        vocabulary: `SceneVocabulary` passed on to `parse_change_caption`.
        scenes: optional `(before, after)` scene graphs per example
            (`{"objects": [...]}` as `vlm.datasets.shapes.scene.generate_scene`).

    Returns:
        dict: `change_type_accuracy` (the type is right),
        `change_object_accuracy` (the type and the changed object's size,
        colour and shape are right; a right "none" counts),
        `exact_change_accuracy` (the whole canonical change is right: also the
        relation and anchor of "moved" and the new colour of "color"), each a
        float in [0, 1], 0.0 when there are no examples; `num_examples`, int;
        and `exact_change_accuracy_<type>` for each change type among
        `changes`, over the examples of that type. A caption stating no
        change type counts as wrong everywhere.
    """
    captions, changes = _checked(captions, changes, scenes)
    hits = {"type": 0, "object": 0, "exact": 0}
    per_type = {}  # type -> [exact hits, examples]
    for i, (caption, truth) in enumerate(zip(captions, changes)):
        true_fields = truth.split("|")
        if true_fields[0] not in CHANGE_TYPES:
            raise ValueError(
                f"A change must start with one of {CHANGE_TYPES}. Received: change={truth!r}")
        parsed = parse_change_caption(caption, vocabulary)
        fields = parsed.split("|") if parsed is not None else [None]
        type_right = fields[0] == true_fields[0]
        object_right = type_right and fields[1:2] == true_fields[1:2]
        exact = _exact(parsed, truth, scenes[i] if scenes is not None else None)
        hits["type"] += type_right
        hits["object"] += object_right
        hits["exact"] += exact
        counts = per_type.setdefault(true_fields[0], [0, 0])
        counts[0] += exact
        counts[1] += 1

    def rate(count):
        return count / len(changes) if changes else 0.0

    scores = {
        "change_type_accuracy": rate(hits["type"]),
        "change_object_accuracy": rate(hits["object"]),
        "exact_change_accuracy": rate(hits["exact"]),
        "num_examples": len(changes),
    }
    for kind in CHANGE_TYPES:
        if kind in per_type:
            exact, count = per_type[kind]
            scores[f"exact_change_accuracy_{kind}"] = exact / count
    return scores


# What a caption of a "moved" change gets, one each (see `moved_breakdown`).
MOVED_OUTCOMES = ("right", "mover_anchor_swapped", "relation_unchanged_by_move",
                  "wrong_relation", "wrong_object", "wrong_type")


def _moved_outcome(parsed, truth, pair):
    """Which of `MOVED_OUTCOMES` a parsed caption of the true "moved" change `truth` is."""
    if _exact(parsed, truth, pair):
        return "right"
    fields = (parsed or "").split("|")
    if fields[0] != "moved":
        return "wrong_type"
    _, mover, relation, anchor = fields
    _, true_mover, _, true_anchor = truth.split("|")
    if (mover, anchor) == (true_anchor, true_mover):
        return "mover_anchor_swapped"
    if mover != true_mover:
        return "wrong_object"
    return _moved_claim(mover, relation, anchor, *pair)


def moved_breakdown(captions, changes, scenes, vocabulary=DEFAULT_VOCABULARY):
    """What the captions of "moved" changes get wrong, one class per caption.

    Only the examples whose true change is "moved" count. Each is, in this
    order of precedence:

    - `right`: exact as `change_scores` counts it with scenes (the reference,
      or the moved object with another relation that the move produced), so
      `right / examples` is `exact_change_accuracy_moved`;
    - `wrong_type`: the caption states another change type, or none;
    - `mover_anchor_swapped`: it names the true anchor as the mover and the
      moved object as the anchor, whatever relation it states;
    - `wrong_object`: it names another object as the mover, or an anchor
      that is not in both scenes (or left out, or the mover itself);
    - `relation_unchanged_by_move`: mover and anchor are right objects and
      the relation holds after the move, but held already before: true of
      the after scene, yet not what the move changed;
    - `wrong_relation`: the relation does not hold after (or is left out).

    Args:
        captions: one caption per example, `str` or `bytes`.
        changes: the true canonical change strings, `str` or `bytes`.
        scenes: `(before, after)` scene graphs per example
            (`{"objects": [...]}` as `vlm.datasets.shapes.scene.generate_scene`).
        vocabulary: `SceneVocabulary` passed on to `parse_change_caption`.

    Returns:
        dict of ints: `examples` (the "moved" examples) and one count per
        class of `MOVED_OUTCOMES`, summing to `examples`.

    Example:

    ```python
    moved_breakdown(["the large blue square moved right of the small red circle"],
                    ["moved|small red circle|left of|large blue square"], [(before, after)])
    # {"examples": 1, "right": 0, "mover_anchor_swapped": 1,
    #  "relation_unchanged_by_move": 0, "wrong_relation": 0, "wrong_object": 0,
    #  "wrong_type": 0}
    ```
    """
    captions, changes = _checked(captions, changes, scenes)
    counts = {"examples": 0, **dict.fromkeys(MOVED_OUTCOMES, 0)}
    for caption, truth, pair in zip(captions, changes, scenes):
        if truth.split("|")[0] != "moved":
            continue
        counts["examples"] += 1
        counts[_moved_outcome(parse_change_caption(caption, vocabulary), truth, pair)] += 1
    return counts
