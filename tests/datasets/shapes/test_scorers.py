"""The shapes scorers' shuffled-image control, on a stand-in model whose answer is its image."""

import numpy as np
import tensorflow as tf

from vlm.data.images import preprocess_image
from vlm.datasets.shapes.scorers import AnswerScorer
from vlm.datasets.shapes.scorers import answer_split

COLOURS = ("red", "green", "blue")


class Resize:
    """The preprocessor method evaluation's batches call: the resize to 8 x 8."""

    @staticmethod
    def resize(images):
        return preprocess_image(images, 8)


class ReadsTheImage:
    """Answers every question with the colour its image encodes (pixel value 50 * index)."""

    image_size = 8
    preprocessor = Resize()
    weights = trainable_weights = [np.zeros((2, 3))]

    def generate(self, images, sampler="greedy", prompts=None):
        assert len(prompts) == len(images)
        return [COLOURS[int(round(float(np.mean(image)) / 50))] for image in images]


def examples():
    """Three one-question examples; example i's image encodes COLOURS[i], its answer."""
    count = len(COLOURS)
    return tf.data.Dataset.from_tensor_slices({
        "image": np.stack([np.full((8, 8, 3), 50 * i, np.uint8) for i in range(count)]),
        "image_id": np.arange(count, dtype=np.int64),
        "captions": np.array([["a small red circle"]] * count),
        "questions": np.array([["what colour is the circle"]] * count),
        "answers": np.array([[c] for c in COLOURS]),
        "question_types": np.zeros((count, 1), np.int64),
    })


def test_shuffled_images_are_the_previous_examples_across_batches():
    model = ReadsTheImage()
    rows, _ = answer_split(model, examples(), batch_size=2, verbose=0)
    assert [r["prediction"] for r in rows] == list(COLOURS)
    # Batches [0, 1] and [2]: 0 gets the first batch's last image, 1 gets 0's, 2 gets 1's.
    shuffled, _ = answer_split(model, examples(), batch_size=2, verbose=0, shuffle_images=True)
    assert [r["prediction"] for r in shuffled] == ["green", "red", "green"]
    assert [r["answer"] for r in shuffled] == list(COLOURS)


def test_a_model_that_reads_the_image_falls_with_shuffled_images():
    metrics, rows, _ = AnswerScorer().evaluate(ReadsTheImage(), examples(), batch_size=2,
                                               gallery_size=1)
    assert metrics["answer_accuracy"] == metrics["answer_accuracy_colour"] == 1.0
    assert metrics["answer_accuracy_shuffled_images"] == 0.0
    assert metrics["answer_accuracy_colour_shuffled_images"] == 0.0
    assert [r["prediction_shuffled_images"] for r in rows] == ["green", "red", "green"]
