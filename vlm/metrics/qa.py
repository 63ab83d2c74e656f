"""Question-answering scores: exact match of normalised answers, overall and per question type.

The answers of `vlm.datasets.shapes.questions` are short and closed ("red", "two",
"yes", "a small red circle"), so a predicted answer counts when it equals the
reference after the caption normalisation of `vlm.utils.caption_text.normalize_caption`
(case and punctuation do not matter; articles do: "small red circle" is not
"a small red circle").

Pure Python: no TensorFlow or Keras, so it runs beside any backend.

Example:

```python
answer_scores(["Red.", "two", "no"], ["red", "three", "no"], ["colour", "count", "existence"])
# {"answer_accuracy": 2 / 3, "num_questions": 3, "answer_accuracy_colour": 1.0,
#  "answer_accuracy_count": 0.0, "answer_accuracy_existence": 1.0}
```
"""

import numbers

from vlm.datasets.shapes.vocabulary import QUESTION_TYPES
from vlm.utils.caption_text import normalize_caption


def normalize_answer(text):
    """An answer as it is compared: `vlm.utils.caption_text.normalize_caption(text)`.

    Args:
        text: `str`, or UTF-8 `bytes` (as tf.data yields them).

    Returns:
        The normalised `str`: lowercase, punctuation removed, spaces collapsed.
    """
    return normalize_caption(text)


def _question_type(value):
    """The type name of `value`: a name (`str`, `bytes`) or an index into `QUESTION_TYPES`."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if 0 <= value < len(QUESTION_TYPES):
            return QUESTION_TYPES[value]
    elif value in QUESTION_TYPES:
        return value
    raise ValueError(
        f"A question type must be one of {QUESTION_TYPES} or an index into them. "
        f"Received: question_type={value!r}")


def answer_scores(predictions, answers, question_types):
    """Scores predicted answers against the reference answers, overall and per question type.

    Args:
        predictions: one predicted answer per question, `str` or `bytes`.
        answers: the reference answers, `str` or `bytes`.
        question_types: the type of each question: a name of
            `QUESTION_TYPES` (`str` or `bytes`) or its index (the
            `question_types` feature of `vlm.datasets.shapes.questions`).

    Returns:
        dict: `answer_accuracy`, the share of predictions equal to their
        answer after `normalize_answer` (float in [0, 1], 0.0 without
        questions); `num_questions`, int; and `answer_accuracy_<type>` for
        each type among `question_types`, over the questions of that type.

    Raises:
        ValueError: the three lists differ in length, or a question type is unknown.
    """
    predictions, answers, question_types = list(predictions), list(answers), list(question_types)
    if not len(predictions) == len(answers) == len(question_types):
        raise ValueError(
            "`predictions`, `answers` and `question_types` must have the same length. "
            f"Received: len(predictions)={len(predictions)}, len(answers)={len(answers)}, "
            f"len(question_types)={len(question_types)}")
    per_type = {}  # type -> [right, questions]
    right = 0
    for prediction, answer, question_type in zip(predictions, answers, question_types):
        hit = normalize_answer(prediction) == normalize_answer(answer)
        counts = per_type.setdefault(_question_type(question_type), [0, 0])
        counts[0] += hit
        counts[1] += 1
        right += hit
    scores = {
        "answer_accuracy": right / len(answers) if answers else 0.0,
        "num_questions": len(answers),
    }
    for kind in QUESTION_TYPES:
        if kind in per_type:
            hits, count = per_type[kind]
            scores[f"answer_accuracy_{kind}"] = hits / count
    return scores
