import numpy as np
import pytest

from vlm.metrics.qa import answer_scores
from vlm.metrics.qa import normalize_answer


@pytest.mark.parametrize("text, expected", [
    ("Red.", "red"),
    (b"  A small RED circle!\n", "a small red circle"),
    ("two", "two"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_accuracy_overall_and_per_type():
    rows = [
        # (prediction, answer, type, right)
        ("red", "red", "colour", True),
        ("Blue.", "blue", "colour", True),         # case and punctuation do not matter
        ("green", "blue", "colour", False),
        ("circle", "circle", "shape", True),
        ("three", "two", "count", False),
        (b"zero", b"zero", "count", True),        # bytes, as tf.data yields them
        ("yes", "no", "existence", False),
        ("small red circle", "a small red circle", "relation", False),  # articles count
        ("a large blue square", "a large blue square", "relation", True),
        ("nothing", "nothing", "relation", True),
    ]
    predictions, answers, types, _ = zip(*rows)
    assert answer_scores(predictions, answers, types) == {
        "answer_accuracy": 6 / 10,
        "num_questions": 10,
        "answer_accuracy_colour": 2 / 3,
        "answer_accuracy_shape": 1.0,
        "answer_accuracy_count": 1 / 2,
        "answer_accuracy_existence": 0.0,
        "answer_accuracy_relation": 2 / 3,
    }


def test_types_as_class_indices_or_bytes():
    # The `question_types` feature of the dataset: indices into QUESTION_TYPES.
    scores = answer_scores(["red", "no", "one"], ["red", "yes", "one"],
                           np.array([0, 4, 3], np.int64))
    assert scores == {"answer_accuracy": 2 / 3, "num_questions": 3,
                      "answer_accuracy_colour": 1.0, "answer_accuracy_count": 1.0,
                      "answer_accuracy_existence": 0.0}
    assert answer_scores(["small"], ["large"], [b"size"])["answer_accuracy_size"] == 0.0


def test_empty_mismatched_and_unknown():
    assert answer_scores([], [], []) == {"answer_accuracy": 0.0, "num_questions": 0}
    with pytest.raises(ValueError, match=r"len\(predictions\)=2, len\(answers\)=3, "
                                         r"len\(question_types\)=2"):
        answer_scores(["a", "b"], ["a", "b", "c"], ["colour", "colour"])
    with pytest.raises(ValueError, match="question_type='weight'"):
        answer_scores(["a"], ["a"], ["weight"])
    with pytest.raises(ValueError, match="question_type=6"):
        answer_scores(["a"], ["a"], [6])
