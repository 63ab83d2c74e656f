"""The shapes question language: questions about a scene, answered from its scene graph.

After CLEVR (Johnson et al., 2017), on the scenes of `vlm.datasets.shapes.scene`:
example `i` of a seed is example `i` of
`vlm.datasets.shapes.captions.generate_examples` (the same image, reference
captions and objects), with six questions added, one of each type in
`QUESTION_TYPES` and in that order, drawn from
`np.random.default_rng([seed, index, 1])`. Every question has exactly one
correct answer, checked against the scene graph when it is made.

Questions and answers follow a small grammar (lowercase, no punctuation; the
words are `vlm.datasets.shapes.vocabulary`'s):

    colour:    "what colour is" REF                 -> COLOR          e.g. "red"
    shape:     "what shape is" REF                  -> SHAPE          e.g. "circle"
    size:      "what size is" REF                   -> SIZE           e.g. "small"
    count:     "how many objects are there"
               | "how many" (COLOR | SIZE) "objects are there"
               | "how many" SHAPE+"s" "are there"   -> NUMBER         e.g. "two"
    existence: "is there a" SIZE COLOR SHAPE        -> "yes" | "no"
    relation:  "what is" REL REF                    -> "a" SIZE COLOR SHAPE | "nothing"

    REF    := "the" [SIZE] [COLOR] (SHAPE | "object") [POSITION]
    NUMBER := "zero" | "one" | "two" | "three"
    REL    := "left of" | "right of" | "above" | "below"   (`RELATIONS`)

A reference (REF) names one object by the shortest description that is
unique in the scene among: shape ("the circle"), size and shape ("the small
circle"), colour and shape ("the red circle"), and size, colour and shape;
it never names the attribute asked about (the noun is then "object": "what
shape is the large blue object"). Where no object of the scene has such a
description, every object shares the description by its other attributes
with another one, and a POSITION (`POSITION_PHRASES`: "on the left", "at the
top", ...) picks the one whose dominant relation (`dominant_relation`) to
every other object of that description is the same: "what colour is the
small circle on the left". The object of a one-object scene is "the circle"
("the large object" when its shape is asked).

Count questions draw an answer among those their 13 wordings give the scene
(zero at half weight), then a wording with that answer. Existence asks about
an object of the scene half of the time ("yes"), else about a (size, colour,
shape) absent from the scene, one attribute away from an object of it
("no"). Relation questions ask for an anchor and relation that exactly one
other object holds, named in full in the answer ("a small red circle"); only
a one-object scene, where none does, answers "nothing".

`qa_prompt` and `qa_text` are the one place the prompt wording lives.
`vlm.datasets.shapes.builders.ShapesQA` writes the examples as a TFDS dataset.
"""

import numpy as np

from vlm.datasets.shapes.captions import generate_examples
from vlm.datasets.shapes.scene import scene_from_features
from vlm.datasets.shapes.scene import triple
from vlm.datasets.shapes.vocabulary import COLORS
from vlm.datasets.shapes.vocabulary import QUESTION_TYPES
from vlm.datasets.shapes.vocabulary import RELATIONS
from vlm.datasets.shapes.vocabulary import SHAPES
from vlm.datasets.shapes.vocabulary import SIZES
from vlm.datasets.shapes.vocabulary import dominant_relation

NUMBER_WORDS = ("zero", "one", "two", "three")
# How a reference picks the object whose dominant relation to the others it describes is this.
POSITION_PHRASES = {
    "left of": "on the left",
    "right of": "on the right",
    "above": "at the top",
    "below": "at the bottom",
}
# The answer of a relation question that no object holds.
NOTHING = "nothing"
# The object attribute an attribute question asks about.
_ASKED = {"colour": "color", "shape": "shape", "size": "size"}
# The attributes a reference may name, shortest first; the asked one is left out.
_REFERENCE_ATTRIBUTES = (("shape",), ("size", "shape"), ("color", "shape"),
                         ("size", "color", "shape"))
# Weight of the answer "zero" among a count question's possible answers (the others: 1).
_ZERO_WEIGHT = 0.5


def qa_prompt(question):
    """The text a model continues with the answer: `"question {question} answer"`.

    `question` may be a `str` or a string tensor (TensorFlow ops, any shape).
    """
    if isinstance(question, str):
        return f"question {question} answer"
    import tensorflow as tf  # here, so the scorers and metrics import this module without it

    return tf.strings.join(["question ", question, " answer"])


def qa_text(question, answer):
    """A question and its answer as one text: `"question {question} answer {answer}"`."""
    return f"{qa_prompt(question)} {answer}"


def _describe(obj, attributes):
    """`"small circle"`, `"large blue object"`: `attributes` of `obj`, the noun last."""
    words = [obj[key] for key in ("size", "color") if key in attributes]
    return " ".join(words + [obj["shape"] if "shape" in attributes else "object"])


def _same(a, b, attributes):
    return all(a[key] == b[key] for key in attributes)


def _reference(objects, i, asked=None):
    """`"the small circle"`: the shortest description unique to `objects[i]` not naming `asked`.

    None where every description without `asked` also fits another object.
    """
    for attributes in _REFERENCE_ATTRIBUTES:
        attributes = tuple(key for key in attributes if key != asked)
        if attributes and sum(_same(objects[i], obj, attributes) for obj in objects) == 1:
            return f"the {_describe(objects[i], attributes)}"
    return None


def _position_references(objects, asked):
    """`[(i, "the small circle on the left"), ...]`: objects told apart by their position.

    Each names every attribute but `asked` and the relation `objects[i]` holds
    to every other object of that description; no other such object holds it
    to all of them (it holds the inverse to `objects[i]`).
    """
    attributes = tuple(key for key in ("size", "color", "shape") if key != asked)
    references = []
    for i, obj in enumerate(objects):
        twins = [other for k, other in enumerate(objects)
                 if k != i and _same(obj, other, attributes)]
        for relation in RELATIONS:
            if twins and all(dominant_relation(obj, twin) == relation for twin in twins):
                references.append(
                    (i, f"the {_describe(obj, attributes)} {POSITION_PHRASES[relation]}"))
    return references


def _choice(rng, items):
    return items[int(rng.integers(len(items)))]


def _attribute_question(kind, objects, rng):
    """Asks the `kind` ("colour", "shape", "size") of one object: "what colour is the circle"."""
    asked = _ASKED[kind]
    references = [(i, reference) for i in range(len(objects))
                  if (reference := _reference(objects, i, asked)) is not None]
    # Two objects (or three) that differ only in the asked attribute: told apart by position,
    # which a scene always allows (of any two or three objects, one lies beyond the others).
    i, reference = _choice(rng, references or _position_references(objects, asked))
    return f"what {kind} is {reference}", objects[i][asked]


def _count_question(objects, rng):
    """A count, "how many red objects are there"; zero at half weight among the answers."""
    candidates = [("how many objects are there", len(objects))]
    for key, values in (("color", COLORS), ("shape", SHAPES), ("size", SIZES)):
        for value in values:
            subject = f"{value}s" if key == "shape" else f"{value} objects"
            candidates.append((f"how many {subject} are there",
                               sum(obj[key] == value for obj in objects)))
    counts = sorted({count for _, count in candidates})
    weights = np.array([_ZERO_WEIGHT if count == 0 else 1.0 for count in counts])
    count = counts[int(rng.choice(len(counts), p=weights / weights.sum()))]
    question = _choice(rng, [text for text, n in candidates if n == count])
    return question, NUMBER_WORDS[count]


def _existence_question(objects, rng):
    """Asks "is there a large green triangle": an object ("yes") or a near miss of one ("no")."""
    obj = _choice(rng, objects)
    if rng.random() < 0.5:
        return f"is there a {' '.join(triple(obj))}", "yes"
    present = {triple(other) for other in objects}
    near_misses = {}  # attribute -> the absent triples that differ from `obj` in it alone
    for key, values in (("size", SIZES), ("color", tuple(COLORS)), ("shape", SHAPES)):
        triples = [triple({**obj, key: value}) for value in values if value != obj[key]]
        if free := [triple for triple in triples if triple not in present]:
            near_misses[key] = free
    # Another colour is always free (7 colours, 3 objects at most).
    absent = _choice(rng, near_misses[_choice(rng, list(near_misses))])
    return f"is there a {' '.join(absent)}", "no"


def _relation_question(objects, rng):
    """Asks "what is left of the square": the one object that is, named in full ("a ...")."""
    held, unheld = [], []  # (anchor, relation, the one holder) and (anchor, relation)
    for a, anchor in enumerate(objects):
        for relation in RELATIONS:
            holders = [obj for k, obj in enumerate(objects)
                       if k != a and dominant_relation(obj, anchor) == relation]
            if len(holders) == 1:
                held.append((a, relation, holders[0]))
            elif not holders:
                unheld.append((a, relation))
    # Of two or three objects, some anchor and relation always have exactly one holder.
    if held:
        a, relation, holder = _choice(rng, held)
        answer = f"a {' '.join(triple(holder))}"
    else:
        (a, relation), answer = _choice(rng, unheld), NOTHING
    return f"what is {relation} {_reference(objects, a)}", answer


def generate_questions(scene, rng):
    """Samples one question of each type about a scene, with its answer.

    Args:
        scene: `{"objects": [...]}` as returned by
            `vlm.datasets.shapes.scene.generate_scene`.
        rng: `np.random.Generator` choosing objects, wordings and answers.

    Returns:
        list of 6 dicts `{"type", "question", "answer"}` (str), one per
        type of `QUESTION_TYPES`, in that order; the grammar is in the
        module docstring.

    Example:

    ```python
    scene = {"objects": [
        {"shape": "circle", "color": "red", "size": "small", "x": 10.0, "y": 30.0},
        {"shape": "square", "color": "blue", "size": "large", "x": 45.0, "y": 32.0}]}
    [(q["question"], q["answer"]) for q in generate_questions(scene, np.random.default_rng(0))]
    # [("what colour is the square", "blue"), ("what shape is the large object", "square"),
    #  ("what size is the square", "large"), ("how many yellow objects are there", "zero"),
    #  ("is there a large red circle", "no"), ("what is left of the square", "a small red circle")]
    ```
    """
    objects = scene["objects"]
    pairs = [_attribute_question(kind, objects, rng) for kind in ("colour", "shape", "size")]
    pairs += [_count_question(objects, rng), _existence_question(objects, rng),
              _relation_question(objects, rng)]
    return [{"type": kind, "question": question, "answer": answer}
            for kind, (question, answer) in zip(QUESTION_TYPES, pairs)]


def generate_qa_examples(num_examples, seed, image_size=64):
    """Yields examples `0 .. num_examples - 1`, each determined by `(seed, index)` alone.

    Example `i` is example `i` of `generate_examples(num_examples, seed,
    image_size)` with the questions of `generate_questions` about its
    scene, drawn from `np.random.default_rng([seed, i, 1])`.

    Args:
        num_examples: int, number of examples (images).
        seed: int, seed of the example stream.
        image_size: int, side of the square images in pixels.

    Yields:
        dicts `{"image_id": int, "image": uint8 (S, S, 3), "captions": list
        of 3-5 str, "objects": dict as in `generate_examples`,
        "questions", "answers", "question_types": lists of 6 str}`.
    """
    for example in generate_examples(num_examples, seed, image_size):
        rng = np.random.default_rng([seed, example["image_id"], 1])
        qa = generate_questions(scene_from_features(example["objects"]), rng)
        yield {**example,
               "questions": [entry["question"] for entry in qa],
               "answers": [entry["answer"] for entry in qa],
               "question_types": [entry["type"] for entry in qa]}


def as_prompted(examples):
    """QA examples read as captions after prompts, for `train_batches` and the models.

    Each example's answers become its "captions" and `qa_prompt` of its
    questions its "prompts" (one per answer); the scene's reference
    captions move to "scene_captions".
    """
    import tensorflow as tf

    def convert(example):
        example = dict(example)
        example["scene_captions"] = example["captions"]
        example["captions"] = example["answers"]
        example["prompts"] = qa_prompt(example["questions"])
        return example

    return examples.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
