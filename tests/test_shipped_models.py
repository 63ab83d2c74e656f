"""Each shipped model's headline figures, measured again on a sample of its test split.

`saved_models/<name>.report.json` holds what `train.py` measured on the whole
test split, and the README's results table repeats it. Here the first
`SAMPLE` test examples are captioned (the first `QA_SAMPLE` asked their six
questions) again and
scored by the data's own rules (relations by the dominant axis, moves against
both scenes): each figure must agree with the report within three standard
errors of the sample, and the README must show the report's figure.
"""

import json
import math
import os

import keras
import pytest

from vlm import load_captioner
from vlm.config import DataConfig
from vlm.datasets import load_examples
from vlm.datasets.shapes.scorers import answer_scores_of
from vlm.datasets.shapes.scorers import answer_split
from vlm.evaluation import caption_split
from vlm.evaluation import change_scores_of
from vlm.metrics.grounded import grounded_scores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = 300
QA_SAMPLE = 100  # six questions each

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(keras.config.backend() != "tensorflow",
                       reason="the figures are the model's, not the backend's: decoding is "
                              "checked equal across backends by the generation tests"),
]


def report(name):
    with open(os.path.join(REPO, "saved_models", f"{name}.report.json")) as f:
        return json.load(f)


def readme():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        return f.read()


def sample_of(name, dataset, size=SAMPLE):
    model = load_captioner(os.path.join(REPO, "saved_models", f"{name}.keras"))
    data = DataConfig(dataset=dataset, train_size=8, validation_size=8, test_size=size)
    return model, load_examples(data, "test", model.image_size)


def assert_agrees(measured, claimed, count, name):
    """`measured` on `count` trials is within 3 standard errors (at least 1 point) of `claimed`."""
    spread = 3 * math.sqrt(max(claimed * (1 - claimed), 0.01) / count)
    assert abs(measured - claimed) <= max(spread, 0.01), (
        f"{name}: {measured:.4f} on {count} test examples, the report claims {claimed:.4f}")


def assert_in_readme(*values):
    text = readme()
    for value in values:
        assert f"{value:.1%}" in text, f"the README does not show {value:.1%}"


def test_the_captioner_says_where_things_are_as_its_report_claims():
    model, examples = sample_of("shapes", "shapes")
    _, captions, _, scenes, _, _ = caption_split(model, examples, batch_size=SAMPLE)
    measured = grounded_scores(captions, scenes)
    claimed = report("shapes")["grounded"]
    relations = sum(len(scene["objects"]) - 1 for scene in scenes)
    objects = sum(len(scene["objects"]) for scene in scenes)
    for key, count in [("object_accuracy", objects), ("relation_accuracy", relations),
                       ("exact_scene_accuracy", len(scenes))]:
        assert_agrees(measured[key], claimed[key], count, key)
    assert_in_readme(claimed["object_accuracy"], claimed["relation_accuracy"],
                     claimed["exact_scene_accuracy"])


def test_the_change_captioner_names_changes_as_its_report_claims():
    model, examples = sample_of("shapes_change", "shapes_change")
    _, captions, _, _, _, changes = caption_split(model, examples, batch_size=SAMPLE)
    measured = change_scores_of(captions, changes)
    claimed = report("shapes_change")["change"]
    moved = sum(c["change"].startswith("moved") for c in changes)
    assert_agrees(measured["exact_change_accuracy"], claimed["exact_change_accuracy"],
                  len(changes), "exact_change_accuracy")
    assert_agrees(measured["exact_change_accuracy_moved"], claimed["exact_change_accuracy_moved"],
                  moved, "exact_change_accuracy_moved")
    assert_in_readme(claimed["exact_change_accuracy"])


def test_the_question_answerer_answers_as_its_report_claims():
    model, examples = sample_of("shapes_qa_adapter", "shapes_qa", QA_SAMPLE)
    rows, _ = answer_split(model, examples, batch_size=QA_SAMPLE)
    measured = answer_scores_of(rows)
    claimed = report("shapes_qa_adapter")["answers"]
    assert_agrees(measured["answer_accuracy"], claimed["answer_accuracy"], len(rows),
                  "answer_accuracy")
    assert_in_readme(claimed["answer_accuracy"])
