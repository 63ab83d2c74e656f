"""Grounded caption scores: read objects and relations out of a caption, check them on the scene.

A caption is parsed into *mentions* (size, colour, shape triples, with None
for a missing word) and *relations* between mentions, in the grammar that
`vlm.datasets.shapes.captions` writes reference captions in. Mentions are then matched
one-to-one to the scene's objects and every claim is checked: attributes
against the matched object, relations by the rule the captions were written
with (the dominant axis between the objects' centres).

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

`relation_breakdown` splits the relation scores by the number of objects in
the scene and counts each wrong relation under one kind of error.
"""

import collections
import re

import numpy as np

from vlm.datasets.shapes.vocabulary import DEFAULT_VOCABULARY
from vlm.datasets.shapes.vocabulary import INVERSE_RELATIONS
from vlm.datasets.shapes.vocabulary import RELATIONS
from vlm.datasets.shapes.vocabulary import dominant_relation

ATTRIBUTES = ("size", "color", "shape")
_RELATION_TOKENS = tuple((relation, tuple(relation.split())) for relation in RELATIONS)
_COUNT_KEYS = (
    "objects", "matched_objects", "color_correct", "shape_correct", "size_correct",
    "relations_correct", "relations_total", "mentions", "hallucinated", "exact_scene",
)
# Each relation's axis: a wrong relation on the dominant axis points the wrong
# way, one on the other axis read the layout wrongly.
_AXIS = {"left of": "x", "right of": "x", "above": "y", "below": "y"}
# The classes of a relation that is not right, one each (see `relation_breakdown`).
RELATION_ERRORS = ("object_misnamed", "wrong_axis", "wrong_direction", "missing")
# Wrong relations (axis or direction) that hold between the subject and another object.
TRUE_OF_ANOTHER = "true_of_another_object"


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
    """Whether a caption may say `obj_a relation obj_b`: the data's own rule.

    The shapes captions state each pair's relation along the axis where the
    centres differ most (`vlm.datasets.shapes.vocabulary.dominant_relation`), so "a below b"
    is wrong when a is a little lower and much further left: a reference
    would say "left of". The change scores and the questions use the same rule.

    Args:
        obj_a: dict with centre `"x"`, `"y"` in pixels.
        relation: one of "left of", "right of", "above", "below".
        obj_b: dict with centre `"x"`, `"y"` in pixels.

    Returns:
        bool.
    """
    if relation not in RELATIONS:
        raise ValueError(f"`relation` must be one of {RELATIONS}. Received: relation={relation!r}")
    return dominant_relation(obj_a, obj_b) == relation


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


_Match = collections.namedtuple("_Match", "mentions relations agree object_match")


def _match_caption(caption, objects, vocabulary):
    """Parses a caption and matches its mentions one-to-one to the scene's objects.

    The one matching that `score_caption` and `relation_breakdown` both judge
    relations by: as many colour+shape matches as possible, then right sizes.

    Args:
        caption: the caption text.
        objects: list of object dicts (the `generate_scene` format).
        vocabulary: `SceneVocabulary` passed on to `parse_caption`.

    Returns:
        `_Match` of `mentions` and `relations` (as `parse_caption`), `agree`,
        a `(objects, mentions, 3)` bool array (mention word equals the
        object's, in `ATTRIBUTES` order) and `object_match`, a dict object
        index -> mention index.
    """
    mentions, relations = parse_caption(caption, vocabulary)
    agree = np.array(
        [[[mention[a] is not None and mention[a] == obj[attr]
           for a, attr in enumerate(ATTRIBUTES)] for mention in mentions] for obj in objects],
        dtype=bool,
    ).reshape(len(objects), len(mentions), len(ATTRIBUTES))
    color_shape = agree[..., 1] & agree[..., 2]
    object_match = _max_weight_matching(np.where(color_shape, 2.0 + agree[..., 0], np.nan))
    return _Match(mentions, relations, agree, object_match)


def _relation_verdicts(match, objects):
    """What each stated relation of a matched caption is: right, or which error.

    Args:
        match: `_match_caption`'s result for `objects`.
        objects: the scene's object dicts.

    Returns:
        one `(verdict, true_of_another)` per relation of `match.relations`:
        `verdict` is "correct" or one of the first three `RELATION_ERRORS`;
        `true_of_another` is whether a wrong relation (axis or direction)
        holds between the subject and an object other than the named anchor.
    """
    mention_to_object = {m: o for o, m in match.object_match.items()}
    verdicts = []
    for i, relation, j in match.relations:
        subject, anchor = mention_to_object.get(i), mention_to_object.get(j)
        # An unmatched mention, or a relation of an object to itself ("a red
        # circle left of a red circle"), leaves no pair of objects to check.
        if subject is None or anchor is None or subject == anchor:
            verdicts.append(("object_misnamed", False))
            continue
        if relation_holds(objects[subject], relation, objects[anchor]):
            verdicts.append(("correct", False))
            continue
        dominant = dominant_relation(objects[subject], objects[anchor])
        verdict = "wrong_direction" if _AXIS[relation] == _AXIS[dominant] else "wrong_axis"
        elsewhere = any(relation_holds(objects[subject], relation, other)
                        for k, other in enumerate(objects) if k not in (subject, anchor))
        verdicts.append((verdict, elsewhere))
    return verdicts


def _caption_counts(match, objects):
    """`score_caption`'s counts of a matched caption, and `_relation_verdicts`'s verdicts."""
    agree = match.agree
    # Attribute matching: the most agreeing attributes in total.
    n_agree = agree.sum(-1).astype(float)
    attribute_match = _max_weight_matching(np.where(n_agree > 0, n_agree, np.nan))
    attribute_correct = np.zeros(len(ATTRIBUTES), dtype=int)
    for o, m in attribute_match.items():
        attribute_correct += agree[o, m]

    verdicts = _relation_verdicts(match, objects)
    relations_correct = sum(verdict == "correct" for verdict, _ in verdicts)
    hallucinated = int(np.sum(~(agree[..., 1] & agree[..., 2]).any(axis=0)))
    exact = (
        len(match.object_match) == len(objects) == len(match.mentions)
        and all(agree[o, m].all() for o, m in match.object_match.items())
        and relations_correct == len(match.relations) >= len(objects) - 1
    )
    counts = (
        len(objects), len(match.object_match), attribute_correct[1], attribute_correct[2],
        attribute_correct[0], relations_correct, max(len(match.relations), len(objects) - 1),
        len(match.mentions), hallucinated, exact,
    )
    return {key: int(value) for key, value in zip(_COUNT_KEYS, counts)}, verdicts


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
    return _caption_counts(_match_caption(caption, objects, vocabulary), objects)[0]


def _check_lengths(captions, scenes):
    """`captions` and `scenes` as lists, after checking there is one caption per scene."""
    captions, scenes = list(captions), list(scenes)
    if len(captions) != len(scenes):
        raise ValueError(
            "`captions` and `scenes` must have the same length. "
            f"Received: len(captions)={len(captions)}, len(scenes)={len(scenes)}"
        )
    return captions, scenes


def _rates(totals, num_scenes):
    """`grounded_scores`'s rates from summed `score_caption` counts over `num_scenes` scenes."""
    def rate(hits, count):
        return hits / count if count else 0.0

    return {
        "object_accuracy": rate(totals["matched_objects"], totals["objects"]),
        "color_accuracy": rate(totals["color_correct"], totals["objects"]),
        "shape_accuracy": rate(totals["shape_correct"], totals["objects"]),
        "size_accuracy": rate(totals["size_correct"], totals["objects"]),
        "relation_accuracy": rate(totals["relations_correct"], totals["relations_total"]),
        "exact_scene_accuracy": rate(totals["exact_scene"], num_scenes),
        "hallucination_rate": rate(totals["hallucinated"], totals["mentions"]),
    }


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
    captions, scenes = _check_lengths(captions, scenes)
    totals = dict.fromkeys(_COUNT_KEYS, 0)
    for caption, scene in zip(captions, scenes):
        for key, value in score_caption(caption, scene["objects"], vocabulary).items():
            totals[key] += value
    return _rates(totals, len(scenes))


def relation_breakdown(captions, scenes, vocabulary=DEFAULT_VOCABULARY):
    """Where the relations of captions go wrong: by number of objects, and by kind of error.

    Relations are judged as `score_caption` judges them (the same mention to
    object matching). Every relation a caption should state and does not
    get right falls in exactly one class of `RELATION_ERRORS`:

    - `object_misnamed`: its subject or anchor mention is matched to no
      scene object by colour and shape (or both name the same object), so
      there is no pair of objects to check it on;
    - `wrong_axis`: both are matched, and the relation is on the other axis
      than the pair's dominant one ("above" where the reference says "left of");
    - `wrong_direction`: on the dominant axis, the opposite way ("right of"
      for "left of");
    - `missing`: not stated: a caption of an `n`-object scene should state
      `n - 1` relations, and each one fewer is missing.

    So per group `relations_total = relations_correct + object_misnamed +
    wrong_axis + wrong_direction + missing`. Across those classes,
    `true_of_another_object` counts the wrong_axis and wrong_direction
    relations that do hold between the subject and some scene object other
    than the named anchor ("X left of Y" where X is left of Z): the relation
    was read right, the anchor named wrong.

    Args:
        captions: one caption string per scene.
        scenes: dicts `{"objects": [...]}` in the `generate_scene` format.
        vocabulary: `SceneVocabulary` passed on to `parse_caption`.

    Returns:
        JSON-friendly dict:
        `by_objects`: `{"1": group, "2": group, ...}` per number of objects
        present, each `group` with the ints `scenes`, `relations_total`,
        `relations_correct` and the rates `relation_accuracy`,
        `exact_scene_accuracy` and `object_accuracy` of those scenes, pooled
        as `grounded_scores` pools them.
        `errors`: `{kind: {"1": int, ..., "all": int}}` for each kind of
        `RELATION_ERRORS` and `true_of_another_object`.

    Example:

    ```python
    relation_breakdown(["a small red circle above a large blue square"], [scene])
    # {"by_objects": {"2": {"scenes": 1, "relations_total": 1, "relations_correct": 0,
    #                       "relation_accuracy": 0.0, "exact_scene_accuracy": 0.0,
    #                       "object_accuracy": 1.0}},
    #  "errors": {"object_misnamed": {"2": 0, "all": 0}, "wrong_axis": {"2": 1, "all": 1},
    #             "wrong_direction": {"2": 0, "all": 0}, "missing": {"2": 0, "all": 0},
    #             "true_of_another_object": {"2": 0, "all": 0}}}
    ```
    """
    captions, scenes = _check_lengths(captions, scenes)
    kinds = (*RELATION_ERRORS, TRUE_OF_ANOTHER)
    totals, errors = {}, {}  # per number of objects: summed counts; error counts
    for caption, scene in zip(captions, scenes):
        objects = scene["objects"]
        counts, verdicts = _caption_counts(_match_caption(caption, objects, vocabulary), objects)
        group = str(len(objects))
        summed = totals.setdefault(group, dict.fromkeys(("scenes", *_COUNT_KEYS), 0))
        summed["scenes"] += 1
        for key, value in counts.items():
            summed[key] += value
        tally = errors.setdefault(group, dict.fromkeys(kinds, 0))
        for verdict, elsewhere in verdicts:
            if verdict != "correct":
                tally[verdict] += 1
            tally[TRUE_OF_ANOTHER] += elsewhere
        tally["missing"] += counts["relations_total"] - len(verdicts)

    groups = sorted(totals, key=int)
    by_objects = {}
    for group in groups:
        summed = totals[group]
        rates = _rates(summed, summed["scenes"])
        by_objects[group] = {
            "scenes": summed["scenes"],
            "relations_total": summed["relations_total"],
            "relations_correct": summed["relations_correct"],
            **{key: rates[key] for key in
               ("relation_accuracy", "exact_scene_accuracy", "object_accuracy")},
        }
    by_kind = {}
    for kind in kinds:
        row = {group: errors[group][kind] for group in groups}
        by_kind[kind] = {**row, "all": sum(row.values())}
    return {"by_objects": by_objects, "errors": by_kind}
