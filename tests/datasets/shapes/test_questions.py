import collections
import itertools
import re

import numpy as np
import pytest

from tests.datasets.shapes.scene_references import dominant
from tests.datasets.shapes.scene_references import triple
from vlm.config import DataConfig
from vlm.datasets import load_examples
from vlm.datasets.shapes import builders
from vlm.datasets.shapes import captions
from vlm.datasets.shapes import questions
from vlm.datasets.shapes import scene
from vlm.datasets.shapes import vocabulary

NUMBERS = {"zero": 0, "one": 1, "two": 2, "three": 3}
# Written out again here, so the check does not lean on the generator's table.
POSITIONS = {"on the left": "left of", "on the right": "right of", "at the top": "above",
             "at the bottom": "below"}
ASKED = {"colour": "color", "shape": "shape", "size": "size"}




def obj(size, color, shape, x, y):
    return {"size": size, "color": color, "shape": shape, "x": float(x), "y": float(y)}


def allowed_descriptions(asked):
    """The attribute sets a reference may name without `asked`: a shape noun, or "object"."""
    keys = [key for key in ("size", "color", "shape") if key != asked]
    subsets = [set(s) for n in range(1, len(keys) + 1) for s in itertools.combinations(keys, n)]
    # The noun is the shape unless the shape is asked about.
    return [s for s in subsets if asked == "shape" or "shape" in s]


def unique_by(target, objects, attributes):
    return sum(all(o[k] == target[k] for k in attributes) for o in objects) == 1


def resolve(reference, objects, asked=None):
    """The one object `reference` ("the small circle on the left") names; checks it is minimal."""
    words = reference.split()
    assert words[0] == "the", reference
    position = None
    for phrase, relation in POSITIONS.items():
        if reference.endswith(" " + phrase):
            words, position = words[:-len(phrase.split())], relation
    *attributes, noun = words[1:]
    named = {}
    if noun != "object":
        assert noun in vocabulary.SHAPES, reference
        named["shape"] = noun
    for word in attributes:
        key = "size" if word in vocabulary.SIZES else "color"
        assert word in vocabulary.COLORS or key == "size", reference
        assert key not in named, reference
        named[key] = word
    assert asked not in named and named, reference
    assert (noun == "object") == (asked == "shape"), reference
    matches = [o for o in objects if all(o[k] == v for k, v in named.items())]
    if position is None:
        assert len(matches) == 1, (reference, objects)
        # Shortest: no description with fewer attributes is unique.
        for attrs in allowed_descriptions(asked):
            if len(attrs) < len(named):
                assert not unique_by(matches[0], objects, attrs), (reference, attrs, objects)
        return matches[0], False
    # A position only where no object has a unique description, and it names every other
    # attribute; it picks the one object in that relation to all others of the description.
    assert not any(unique_by(o, objects, attrs)
                   for o in objects for attrs in allowed_descriptions(asked)), (reference, objects)
    assert set(named) == {"size", "color", "shape"} - {asked}, reference
    (picked,) = [o for o in matches
                 if all(dominant(o, other) == position for other in matches if other is not o)]
    assert len(matches) >= 2
    return picked, True


def check_answer(entry, objects):
    """Asserts that the stored answer of one question is true of the scene; returns a tag."""
    kind, question, answer = entry["type"], entry["question"], entry["answer"]
    assert question == question.lower() and re.fullmatch(r"[a-z ]+", question), question
    words = set(question.split())
    if kind in ASKED:
        match = re.fullmatch(r"what (colour|shape|size) is (the .+)", question)
        assert match and match.group(1) == kind, question
        asked = ASKED[kind]
        values = {"color": vocabulary.COLORS, "shape": vocabulary.SHAPES,
                  "size": vocabulary.SIZES}[asked]
        assert not words & set(values), question  # the asked attribute is not named
        target, by_position = resolve(match.group(2), objects, asked)
        assert answer == target[asked], (question, answer, objects)
        return "position" if by_position else "attributes"
    if kind == "count":
        subject = re.fullmatch(r"how many (.+) are there", question).group(1)
        if subject == "objects":
            expected = len(objects)
        elif subject.endswith("s") and subject[:-1] in vocabulary.SHAPES:
            expected = sum(o["shape"] == subject[:-1] for o in objects)
        else:
            value, rest = subject.split(" ")
            assert rest == "objects", question
            key = "size" if value in vocabulary.SIZES else "color"
            assert value in vocabulary.COLORS or key == "size", question
            expected = sum(o[key] == value for o in objects)
        assert NUMBERS[answer] == expected, (question, answer, objects)
        return subject
    if kind == "existence":
        size, color, shape = re.fullmatch(r"is there a (\w+) (\w+) (\w+)", question).groups()
        assert size in vocabulary.SIZES and color in vocabulary.COLORS
        assert shape in vocabulary.SHAPES
        present = (size, color, shape) in {triple(o) for o in objects}
        assert answer == ("yes" if present else "no"), (question, answer, objects)
        if not present:  # a near miss: one attribute away from an object of the scene
            assert any(sum(a != b for a, b in zip((size, color, shape), triple(o))) == 1
                       for o in objects), (question, objects)
        return answer
    assert kind == "relation"
    match = re.fullmatch(r"what is (left of|right of|above|below) (the .+)", question)
    relation = match.group(1)
    anchor, _ = resolve(match.group(2), objects)
    holders = [o for o in objects if o is not anchor and dominant(o, anchor) == relation]
    if answer == "nothing":
        assert not holders and len(objects) == 1, (question, objects)
    else:
        assert len(holders) == 1 and answer == "a " + " ".join(triple(holders[0])), (
            question, answer, objects)
    return relation


def sample_questions(count, image_size, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        graph = scene.generate_scene(rng, image_size)
        yield graph["objects"], questions.generate_questions(graph, rng)


@pytest.mark.parametrize("image_size, count", [(64, 500), (32, 200)])
def test_every_answer_is_true_of_the_scene(image_size, count):
    answers = collections.defaultdict(collections.Counter)
    tags = collections.defaultdict(collections.Counter)
    for objects, entries in sample_questions(count, image_size, seed=image_size):
        assert [entry["type"] for entry in entries] == list(vocabulary.QUESTION_TYPES)
        for entry in entries:
            tags[entry["type"]][check_answer(entry, objects)] += 1
            relation_answer = entry["type"] == "relation" and entry["answer"] != "nothing"
            answers[entry["type"]]["<object>" if relation_answer else entry["answer"]] += 1
    # Every answer word of each type occurs.
    assert set(answers["colour"]) == set(vocabulary.COLORS)
    assert set(answers["shape"]) == set(vocabulary.SHAPES)
    assert set(answers["size"]) == set(vocabulary.SIZES)
    assert set(answers["count"]) == set(NUMBERS)
    assert set(answers["existence"]) == {"yes", "no"}
    assert set(answers["relation"]) == {"<object>", "nothing"}
    assert set(tags["relation"]) == set(vocabulary.RELATIONS)
    # Count answers are spread, zero included; the forms all occur.
    shares = {word: n / count for word, n in answers["count"].items()}
    assert 0.1 < shares["zero"] < 0.35 and shares["one"] < 0.6 and shares["three"] > 0.04, shares
    assert {"objects", "small objects", "red objects", "circles"} <= set(tags["count"])
    assert 0.4 <= answers["existence"]["yes"] / count <= 0.6, answers["existence"]
    # "nothing" only in one-object scenes (a third of them): a minority of all answers.
    assert answers["relation"]["nothing"] / (6 * count) < 0.2
    # Objects that differ only in the asked attribute are told apart by position, sometimes.
    assert sum(tags[kind]["position"] for kind in ASKED) > 0.02 * count, tags


def test_position_tells_apart_objects_that_differ_only_in_the_asked_attribute():
    # Two small circles: only their colour tells them apart, so position does.
    left, right = obj("small", "red", "circle", 10, 30), obj("small", "blue", "circle", 50, 32)
    asked = {}
    for seed in range(20):
        entry = questions.generate_questions({"objects": [left, right]},
                                             np.random.default_rng(seed))[0]
        asked[entry["question"]] = entry["answer"]
    assert asked == {"what colour is the small circle on the left": "red",
                     "what colour is the small circle on the right": "blue"}
    # Three: one lies below both others (the other two are not beyond both on any side).
    bottom = obj("small", "green", "circle", 30, 60)
    for seed in range(5):
        entry = questions.generate_questions(
            {"objects": [obj("small", "red", "circle", 10, 20), bottom,
                         obj("small", "blue", "circle", 50, 24)]},
            np.random.default_rng(seed))[0]
        assert entry == {"type": "colour", "answer": "green",
                         "question": "what colour is the small circle at the bottom"}


def test_one_object_scene():
    scene = {"objects": [obj("large", "cyan", "triangle", 30, 30)]}
    relations = set()
    for seed in range(30):
        entries = questions.generate_questions(scene, np.random.default_rng(seed))
        by_type = {entry["type"]: entry for entry in entries}
        assert by_type["colour"]["question"] == "what colour is the triangle"
        assert by_type["shape"]["question"] == "what shape is the large object"
        assert by_type["size"]["question"] == "what size is the triangle"
        assert by_type["relation"]["answer"] == "nothing"
        relations.add(by_type["relation"]["question"])
    assert relations == {f"what is {r} the triangle" for r in vocabulary.RELATIONS}


def test_prompt_and_text():
    assert (questions.qa_prompt("what colour is the circle")
            == "question what colour is the circle answer")
    assert (questions.qa_text("is there a small red circle", "yes")
            == "question is there a small red circle answer yes")


def test_same_seed_same_bytes_and_the_shapes_examples():
    first = list(questions.generate_qa_examples(5, seed=3, image_size=16))
    again = list(questions.generate_qa_examples(5, seed=3, image_size=16))
    other = list(questions.generate_qa_examples(5, seed=4, image_size=16))
    caption_examples = list(captions.generate_examples(5, seed=3, image_size=16))
    for a, b, c, d in zip(first, again, other, caption_examples):
        assert a["image"].shape == (16, 16, 3) and a["image"].dtype == np.uint8
        assert a["image"].tobytes() == b["image"].tobytes() != c["image"].tobytes()
        for key in ("questions", "answers", "question_types", "captions", "objects"):
            assert a[key] == b[key], key
        assert a["question_types"] == list(vocabulary.QUESTION_TYPES)
        assert len(a["questions"]) == len(a["answers"]) == 6
        # The image, captions and objects are those of the shapes captions dataset.
        assert a["image"].tobytes() == d["image"].tobytes()
        assert (a["image_id"], a["captions"], a["objects"]) == (
            d["image_id"], d["captions"], d["objects"])
    assert [a["questions"] for a in first] != [c["questions"] for c in other]
    # An example depends on (seed, index) only.
    alone = list(questions.generate_qa_examples(3, seed=3, image_size=16))[-1]
    assert alone["questions"] == first[2]["questions"] and alone["answers"] == first[2]["answers"]


def test_load_shapes_qa_prepares_offline(tmp_path, capsys):
    sizes = {"train": 6, "validation": 3, "test": 3}
    kwargs = dict(image_size=16, train_size=6, validation_size=3, test_size=3, seed=1,
                  data_dir=tmp_path)
    first_questions = {}
    for split, size in sizes.items():
        examples = list(builders.load_shapes_qa(split, **kwargs).as_numpy_iterator())
        assert len(examples) == size
        examples.sort(key=lambda example: example["image_id"])  # TFDS stores them shuffled
        expected = questions.generate_qa_examples(size, builders.split_seed(1, split),
                                                  image_size=16)
        for example, reference in zip(examples, expected):
            assert example["image"].shape == (16, 16, 3) and example["image"].dtype == np.uint8
            np.testing.assert_array_equal(example["image"], reference["image"])
            assert example["image_id"] == reference["image_id"]
            assert [c.decode() for c in example["captions"]] == reference["captions"]
            assert [q.decode() for q in example["questions"]] == reference["questions"]
            assert [a.decode() for a in example["answers"]] == reference["answers"]
            assert example["question_types"].dtype == np.int64
            assert example["question_types"].tolist() == list(range(6))
            assert (scene.scene_from_features(example["objects"])
                    == scene.scene_from_features(reference["objects"]))
        first_questions[split] = [e["questions"].tolist() for e in examples]
    out = capsys.readouterr().out
    assert "Preparing shapes QA dataset (16px)" in out and "12/12" in out
    assert "dataset_info.json" not in out and "Generating" not in out
    assert (tmp_path / "shapes_qa" / "s16_tr6_va3_te3_seed1").is_dir()
    assert first_questions["train"][:3] != first_questions["validation"]
    # The data config reaches it by name, from the prepared files.
    config = DataConfig(dataset="shapes_qa", train_size=6, validation_size=3, test_size=3,
                        seed=1, data_dir=str(tmp_path))
    config.validate()
    test = list(load_examples(config, "test", image_size=16).as_numpy_iterator())
    assert sorted(e["questions"].tolist() for e in test) == sorted(first_questions["test"])
    assert "Preparing" not in capsys.readouterr().out
