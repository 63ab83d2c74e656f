"""Shared by the batching, COCO and folder tests: sizes, a vocabulary, tiny examples, a tiny
model."""

import keras
import numpy as np
import tensorflow as tf

from vlm.data.tokenizer import END
from vlm.data.tokenizer import PAD
from vlm.data.tokenizer import START
from vlm.data.tokenizer import UNK

S = 8  # image side after resizing
T = 6  # sequence length
VOCABULARY = [PAD, UNK, START, END, "a", "dog", "runs", "on", "the", "grass", "cat", "##s",
              "red", "ball", "sits", "two"]


# Distinct captions per image (image i is filled with the value 40 * (i + 1)).
CAPTIONS = [
    ["A dog runs.", "the dog on the grass", "..."],  # "..." normalises to "": skipped
    ["A cat sits", "two cats", "a red ball", "the cat"],
    ["Two dogs"],
]
PAIRS = sum(len([c for c in caps if c != "..."]) for caps in CAPTIONS)  # 7


def make_examples(extra=False):
    """Three images of different sizes, each one flat color, with 3, 4 and 1 captions."""
    sizes = [(10, 12), (16, 9), (5, 5)]

    def generate():
        for i, ((h, w), captions) in enumerate(zip(sizes, CAPTIONS)):
            example = {
                "image": np.full((h, w, 3), 40 * (i + 1), np.uint8),
                "captions": np.array(captions, dtype=object),
                "image_id": np.int64(100 + i),
            }
            if extra:
                example["objects"] = {
                    "label": np.arange(i + 1, dtype=np.int64),
                    "size": np.linspace(0.5, 1.0, i + 1).astype(np.float32),
                    "color": np.array(["red"] * (i + 1), dtype=object),
                }
            yield example

    signature = {
        "image": tf.TensorSpec((None, None, 3), tf.uint8),
        "captions": tf.TensorSpec((None,), tf.string),
        "image_id": tf.TensorSpec((), tf.int64),
    }
    if extra:
        signature["objects"] = {
            "label": tf.TensorSpec((None,), tf.int64),
            "size": tf.TensorSpec((None,), tf.float32),
            "color": tf.TensorSpec((None,), tf.string),
        }
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def collect(dataset):
    inputs, labels = zip(*[(x, y) for x, y in dataset.as_numpy_iterator()])
    images = np.concatenate([x["images"] for x in inputs])
    tokens = np.concatenate([x["tokens"] for x in inputs])
    return images, tokens, np.concatenate(labels)


def tiny_model():
    """Pooled pixels + token embeddings -> logits: trains in a second on any backend."""
    keras.utils.set_random_seed(0)
    images = keras.Input((S, S, 3), name="images")
    tokens = keras.Input((T,), dtype="int32", name="tokens")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(images))
    image_features = keras.layers.Dense(8)(pooled)
    text_features = keras.layers.Embedding(len(VOCABULARY), 8)(tokens)
    hidden = text_features + keras.ops.expand_dims(image_features, 1)  # (batch, T, 8)
    logits = keras.layers.Dense(len(VOCABULARY))(hidden)
    model = keras.Model({"images": images, "tokens": tokens}, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )
    return model
