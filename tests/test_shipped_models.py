"""Each shipped model's headline figures, measured again, and every README command on it.

`saved_models/<name>.report.json` holds what `train.py` measured on the whole
test split, and the README's results table repeats it. Here the first
`SAMPLE` test examples are captioned (the first `QA_SAMPLE` asked their six
questions) again and
scored by the data's own rules (relations by the dominant axis, moves against
both scenes): each figure must agree with the report within three standard
errors of the sample, and the README must show the report's figure.
"""

import functools
import json
import math
import os

import keras
import numpy as np
import PIL.Image
import pytest

from vlm import load_captioner
from vlm.config import DataConfig
from vlm.datasets import load_examples
from vlm.datasets.shapes.scorers import answer_scores_of
from vlm.datasets.shapes.scorers import answer_split
from vlm.evaluation import caption_split
from vlm.evaluation import change_scores_of
from vlm.evaluation import shuffled_image_scores
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
        # 99.95% is shown as such, not rounded up to 100.0%.
        shown = [f"{value:.1%}", f"{value:.2%}"]
        assert any(s in text for s in shown), f"the README does not show {shown[0]}"


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
    # The control: each scene scored on the caption of another image (8.5% on the test split).
    assert shuffled_image_scores(captions, scenes)["object_accuracy_shuffled_images"] < 0.2


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
    control = shuffled_image_scores(captions, changes=changes)
    assert control["exact_change_accuracy_shuffled_images"] < 0.2  # 7.5% on the test split


def test_the_question_answerer_answers_as_its_report_claims():
    model, examples = sample_of("shapes_qa_adapter", "shapes_qa", QA_SAMPLE)
    rows, _ = answer_split(model, examples, batch_size=QA_SAMPLE)
    measured = answer_scores_of(rows)
    claimed = report("shapes_qa_adapter")["answers"]
    assert_agrees(measured["answer_accuracy"], claimed["answer_accuracy"], len(rows),
                  "answer_accuracy")
    assert_in_readme(claimed["answer_accuracy"])
    # Asked of another example's image, the answers it reads from the image fall: colour to
    # chance (1 in 7), all answers by a third (test split: 66.3% to 33.1%).
    shuffled, _ = answer_split(model, examples, batch_size=QA_SAMPLE, shuffle_images=True)
    control = answer_scores_of(shuffled)
    assert control["answer_accuracy_colour"] < 0.3
    assert control["answer_accuracy"] < measured["answer_accuracy"] - 0.2


def write_test_images(data, image_size, folder, count=2):
    """The first `count` test examples of `data` as PNG files: `[[path, ...] per example]`."""
    files = []
    for i, example in enumerate(load_examples(data, "test", image_size).take(count)):
        images = example["images"] if "images" in example else [example["image"]]
        paths = []
        for j, image in enumerate(images):
            path = os.path.join(folder, f"{data.dataset}_{i}_{j}.png")
            PIL.Image.fromarray(np.asarray(image)).save(path)
            paths.append(path)
        files.append(paths)
    return files


def read_pixels(paths):
    return [np.asarray(PIL.Image.open(p).convert("RGB")) for p in paths]


QUESTION = "question what colour is the small circle answer"


@pytest.mark.parametrize("name, dataset, flags", [
    ("shapes", "shapes", []),
    ("shapes_change", "shapes_change", ["--together"]),
    ("shapes_qa_adapter", "shapes_qa", ["--prompt", QUESTION]),
])
def test_every_readme_command_runs_on_the_shipped_model(name, dataset, flags, tmp_path, capsys,
                                                         monkeypatch):
    """`python -m vlm caption`, `evaluate.py` (the whole report) and `export`, then serving."""
    import tensorflow as tf

    import evaluate
    from vlm import cli
    from vlm import config

    path = os.path.join(REPO, "saved_models", f"{name}.keras")
    model = load_captioner(path)
    # This module's sample of the test split: prepared once for all its tests.
    sizes = dict(train_size=8, validation_size=8,
                 test_size=QA_SAMPLE if dataset == "shapes_qa" else SAMPLE)
    examples = write_test_images(DataConfig(dataset=dataset, **sizes), model.image_size,
                                 str(tmp_path))
    prompts = [QUESTION] * len(examples) if model.prompted else None
    if model.images_per_example is not None:
        inputs = [read_pixels(paths) for paths in examples]
    else:
        inputs = model.preprocessor([read_pixels(paths)[0] for paths in examples])
    expected = model.generate(inputs, prompts=prompts)
    assert all(expected), expected
    capsys.readouterr()  # the dataset's preparation line

    # caption: one line per image, or for a pair given with --together.
    if model.images_per_example is not None:
        argv, names = examples[0], [" + ".join(examples[0])]
    else:
        argv = names = [paths[0] for paths in examples]
    assert cli.main(["caption", *argv, "--model", path, *flags]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{n}\t{c}" for n, c in zip(names, expected)]

    # evaluate.py, every file of its report. The test split is this module's
    # sample: the default sizes would prepare the 20,000-image training split.
    monkeypatch.setattr(config, "DataConfig", functools.partial(DataConfig, **sizes))
    output = tmp_path / "results" / "results.json"
    assert evaluate.main(["--model", path, "--max-images", "2", "--output", str(output)]) == 0
    monkeypatch.undo()
    metrics = json.loads(output.read_text())
    assert metrics["dataset"] == dataset
    written = capsys.readouterr().out.strip().splitlines()[-1]
    for suffix in (".json", ".md", ".jsonl"):
        assert suffix + "," in written + ",", written

    # export, then serving from plain TensorFlow: the answers of `generate`.
    # Without XLA, which tests/export/ checks gives the same answers.
    serving = str(tmp_path / "serving")
    assert cli.main(["export", "--model", path, "--output", serving, "--no-xla"]) == 0
    served = tf.saved_model.load(serving)
    images = [[open(p, "rb").read() for p in paths] for paths in examples]
    if model.images_per_example is None:
        images = [row[0] for row in images]
    kwargs = {"prompts": tf.constant(prompts)} if prompts else {}
    out = served.signatures["serving_default"](images=tf.constant(images), **kwargs)
    # The export keeps a third of a prompted model's sequence for the answer.
    max_length = model.sequence_length // 3 if model.prompted else None
    reference = model.generate(inputs, prompts=prompts, max_length=max_length)
    assert [c.decode() for c in out["captions"].numpy()] == reference
