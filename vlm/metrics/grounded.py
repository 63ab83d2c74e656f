"""Grounded caption scores: read objects and relations out of a caption, check them on the scene.

A caption is parsed into *mentions* (size, colour, shape triples, with None
for a missing word) and *relations* between mentions, in the grammar that
`vlm.data.shapes` writes reference captions in. Mentions are then matched
one-to-one to the scene's objects and every claim is checked: attributes
against the matched object, relations against the objects' centres.

Pure Python and NumPy: no TensorFlow or Keras, so it runs beside any backend.

Example:

```python
scene = {"objects": [
    {"shape": "circle", "color": "red", "size": "small", "x": 10.0, "y": 30.0},
    {"shape": "square", "color": "blue", "size": "large", "x": 50.0, "y": 32.0},
]}
grounded_scores(["a small red circle left of a large blue square"], [scene])
# {"object_accuracy": 1.0, ..., "relation_accuracy": 1.0, "hallucination_rate": 0.0}
```
"""

import re

import numpy as np

from vlm.scene_vocab import DEFAULT_VOCABULARY
from vlm.scene_vocab import INVERSE_RELATIONS
from vlm.scene_vocab import RELATIONS

ATTRIBUTES = ("size", "color", "shape")
_RELATION_TOKENS = tuple((relation, tuple(relation.split())) for relation in RELATIONS)
_COUNT_KEYS = (
    "objects", "matched_objects", "color_correct", "shape_correct", "size_correct",
    "relations_correct", "relations_total", "mentions", "hallucinated", "exact_scene",
)


def parse_caption(text, vocabulary=DEFAULT_VOCABULARY):
    """Reads the object mentions and spatial relations out of a caption.

    A mention is the size and colour words before a shape word ("a small red
    circle"); attribute words that reach a relation, "and" or the end without a
    shape become a mention with shape None. A repeated mention ("the large
    blue square" after "a large blue square") is the same mention. A relation
    links the closest mention before it to the first mention after it; "to the
    left of" reads as "left of", and "b right of a" is stored as "a left of b"
    when "a left of b" was already stated, so a fact is counted once. All other
    words (articles, "there is", "a picture of", junk) are ignored.

    Args:
        text: the caption, `str` or UTF-8 `bytes`; anything is accepted.
        vocabulary: `SceneVocabulary` with the colour, shape and size words.

    Returns:
        `(mentions, relations)`: `mentions` is a list of `(size, color, shape)`
        tuples, each entry a word or None; `relations` is a list of
        `(i, relation, j)` with mention indices `i`, `j` and `relation` one of
        "left of", "right of", "above", "below".
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="ignore")
    tokens = re.findall(r"[a-z]+", str(text).lower())
    mentions, relations = [], []
    pending = {"size": None, "color": None}
    subject = None  # index of the latest mention
    open_relation = None  # (subject, relation) waiting for its object

    def add_mention(shape):
        nonlocal subject, open_relation
        mention = (pending["size"], pending["color"], shape)
        pending.update(size=None, color=None)
        if mention not in mentions:
            mentions.append(mention)
        subject = mentions.index(mention)
        if open_relation is not None:
            _add_relation(relations, open_relation[0], open_relation[1], subject)
            open_relation = None

    def flush_attributes():
        if pending["size"] is not None or pending["color"] is not None:
            add_mention(None)

    k = 0
    while k < len(tokens):
        token = tokens[k]
        relation = next((rel for rel, words in _RELATION_TOKENS
                         if tuple(tokens[k:k + len(words)]) == words), None)
        if relation is not None:
            flush_attributes()
            open_relation = None if subject is None else (subject, relation)
            k += len(relation.split())
            continue
        if token in vocabulary.sizes:
            pending["size"] = token
        elif token in vocabulary.colors:
            pending["color"] = token
        elif token in vocabulary.shapes:
            add_mention(token)
        elif token == "and":
            flush_attributes()
        k += 1
    flush_attributes()
    return mentions, relations


def _add_relation(relations, i, relation, j):
    """Appends `(i, relation, j)` unless it or its inverse is already there."""
    if (i, relation, j) not in relations and (j, INVERSE_RELATIONS[relation], i) not in relations:
        relations.append((i, relation, j))


def relation_holds(obj_a, relation, obj_b):
    """Whether `obj_a relation obj_b` is true of the two objects' centres.

    Comparisons are strict; x grows to the right and y grows downward.

    Args:
        obj_a: dict with centre `"x"`, `"y"` in pixels.
        relation: one of "left of", "right of", "above", "below".
        obj_b: dict with centre `"x"`, `"y"` in pixels.

    Returns:
        bool.
    """
    if relation == "left of":
        return obj_a["x"] < obj_b["x"]
    if relation == "right of":
        return obj_a["x"] > obj_b["x"]
    if relation == "above":
        return obj_a["y"] < obj_b["y"]
    if relation == "below":
        return obj_a["y"] > obj_b["y"]
    raise ValueError(f"`relation` must be one of {RELATIONS}. Received: relation={relation!r}")


def _max_weight_matching(weights):
    """One-to-one matching of rows (objects) to columns (mentions) with the largest total weight.

    Args:
        weights: `(n_objects, n_mentions)` array; NaN marks a pair that may
            not be matched. Exhaustive over subsets of objects, so meant for
            the few objects of a scene.

    Returns:
        dict object index -> mention index.
    """
    n_objects, n_mentions = weights.shape
    # best[mask] = (total weight, matching) using only the objects in `mask`.
    best = {0: (0.0, {})}
    for m in range(n_mentions):
        for mask, (total, matching) in list(best.items()):
            for o in range(n_objects):
                if mask & (1 << o) or np.isnan(weights[o, m]):
                    continue
                candidate = (total + weights[o, m], {**matching, o: m})
                new_mask = mask | (1 << o)
                if new_mask not in best or candidate[0] > best[new_mask][0]:
                    best[new_mask] = candidate
    return max(best.values(), key=lambda entry: entry[0])[1]


def score_caption(caption, objects, vocabulary=DEFAULT_VOCABULARY):
    """Counts what one caption gets right about one scene.

    Args:
        caption: the caption text.
        objects: list of object dicts with `"shape"`, `"color"`, `"size"`,
            `"x"`, `"y"` (the `generate_scene` format).
        vocabulary: `SceneVocabulary` passed on to `parse_caption`.

    Returns:
        dict of integer counts: `objects` (scene objects), `matched_objects`
        (objects matched by colour and shape), `color_correct`,
        `shape_correct`, `size_correct` (objects whose best-agreeing mention
        has the attribute right), `relations_correct`, `relations_total`
        (`max(relations stated, objects - 1)`), `mentions`, `hallucinated`
        (mentions whose colour and shape fit no object) and `exact_scene`
        (1 if the caption describes the scene exactly, else 0).
    """
    mentions, relations = parse_caption(caption, vocabulary)
    agree = np.array(
        [[[mention[a] is not None and mention[a] == obj[attr]
           for a, attr in enumerate(ATTRIBUTES)] for mention in mentions] for obj in objects],
        dtype=bool,
    ).reshape(len(objects), len(mentions), len(ATTRIBUTES))
    color_shape = agree[..., 1] & agree[..., 2]

    # Object matching: as many colour+shape matches as possible, then right sizes.
    object_match = _max_weight_matching(np.where(color_shape, 2.0 + agree[..., 0], np.nan))
    # Attribute matching: the most agreeing attributes in total.
    n_agree = agree.sum(-1).astype(float)
    attribute_match = _max_weight_matching(np.where(n_agree > 0, n_agree, np.nan))
    attribute_correct = np.zeros(len(ATTRIBUTES), dtype=int)
    for o, m in attribute_match.items():
        attribute_correct += agree[o, m]

    mention_to_object = {m: o for o, m in object_match.items()}
    relations_correct = sum(
        i in mention_to_object and j in mention_to_object and i != j
        and relation_holds(objects[mention_to_object[i]], relation, objects[mention_to_object[j]])
        for i, relation, j in relations
    )
    hallucinated = int(np.sum(~color_shape.any(axis=0)))
    exact = (
        len(object_match) == len(objects) == len(mentions)
        and all(agree[o, m].all() for o, m in object_match.items())
        and relations_correct == len(relations) >= len(objects) - 1
    )
    counts = (
        len(objects), len(object_match), attribute_correct[1], attribute_correct[2],
        attribute_correct[0], relations_correct, max(len(relations), len(objects) - 1),
        len(mentions), hallucinated, exact,
    )
    return {key: int(value) for key, value in zip(_COUNT_KEYS, counts)}


def grounded_scores(captions, scenes, vocabulary=DEFAULT_VOCABULARY):
    """Scores captions against their scenes, pooling counts over all pairs.

    Each rate is a sum of hits over a sum of counts across all captions, so a
    1-object scene with no stated relation adds nothing to
    `relation_accuracy`. A rate whose denominator is zero is 0.0.

    Args:
        captions: one caption string per scene.
        scenes: dicts `{"objects": [...]}` in the `generate_scene` format.
        vocabulary: `SceneVocabulary` passed on to `parse_caption`.

    Returns:
        dict of floats in [0, 1]: `object_accuracy` (objects matched by colour
        and shape), `color_accuracy`, `shape_accuracy`, `size_accuracy`,
        `relation_accuracy` (true relations over
        `max(stated, objects - 1)`), `exact_scene_accuracy` (images described
        exactly: every object with all attributes right, no extra mention,
        all stated relations true and at least `objects - 1` of them) and
        `hallucination_rate` (mentions fitting no object by colour and shape,
        over all mentions).
    """
    captions, scenes = list(captions), list(scenes)
    if len(captions) != len(scenes):
        raise ValueError(
            "`captions` and `scenes` must have the same length. "
            f"Received: len(captions)={len(captions)}, len(scenes)={len(scenes)}"
        )
    totals = dict.fromkeys(_COUNT_KEYS, 0)
    for caption, scene in zip(captions, scenes):
        for key, value in score_caption(caption, scene["objects"], vocabulary).items():
            totals[key] += value

    def rate(hits, count):
        return hits / count if count else 0.0

    return {
        "object_accuracy": rate(totals["matched_objects"], totals["objects"]),
        "color_accuracy": rate(totals["color_correct"], totals["objects"]),
        "shape_accuracy": rate(totals["shape_correct"], totals["objects"]),
        "size_accuracy": rate(totals["size_correct"], totals["objects"]),
        "relation_accuracy": rate(totals["relations_correct"], totals["relations_total"]),
        "exact_scene_accuracy": rate(totals["exact_scene"], len(scenes)),
        "hallucination_rate": rate(totals["hallucinated"], totals["mentions"]),
    }
