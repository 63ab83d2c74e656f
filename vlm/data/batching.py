"""Batches of examples for training and evaluation (tf.data).

Every example source (`vlm.data.coco`, `vlm.data.folder`, `vlm.datasets.shapes`)
yields an *examples* dataset, one element per image, a dict with:

    "image":    uint8 (height, width, 3), any size
    "captions": tf.string (num_references,), at least one reference
    "image_id": scalar (int64 for COCO, the file name for folders)

plus any other keys a source adds (the shapes dataset adds "objects"). With
"prompts", tf.string (num_references,), each caption follows its prompt (a
question before its answer: `vlm.datasets.shapes.questions.as_prompted`). An
example of several images (`vlm.datasets.shapes.changes`) has "images", uint8
(num_images, height, width, 3), in place of "image"; its batches then hold
(batch, num_images, S, S, 3) images.
`train_batches` and `eval_batches` turn examples into model inputs; they work
unchanged under the TensorFlow, JAX and PyTorch Keras backends (Keras converts
tf.data batches for `fit`).
"""

import numpy as np
import tensorflow as tf

from vlm.data.tokenizer import prompted_captions
from vlm.data.tokenizer import tf_normalize_caption
from vlm.utils.argument_checks import check_positive_int

AUTOTUNE = tf.data.AUTOTUNE


def _check_examples(examples):
    """Raises a ValueError naming the element_spec if it is not an examples dataset."""
    if not isinstance(examples, tf.data.Dataset):
        raise TypeError(
            f"`examples` must be a tf.data.Dataset. Received: {type(examples).__name__}"
        )
    spec = examples.element_spec
    problems = []
    if not isinstance(spec, dict):
        problems.append("elements must be dicts")
    else:
        image_key = "images" if "images" in spec else "image"
        for key in (image_key, "captions", "image_id"):
            if key not in spec:
                problems.append(f"missing key {key!r}")
        image, captions = spec.get(image_key), spec.get("captions")
        rank = 4 if image_key == "images" else 3
        if image is not None and (
            getattr(image, "dtype", None) != tf.uint8
            or image.shape.rank != rank
            or image.shape[-1] != 3
        ):
            problems.append(f"'{image_key}' must be uint8 ("
                            + ("num_images, " if rank == 4 else "") + "height, width, 3)")
        if captions is not None and (
            getattr(captions, "dtype", None) != tf.string or captions.shape.rank != 1
        ):
            problems.append("'captions' must be a tf.string vector")
    if problems:
        raise ValueError(
            "`examples` is not an examples dataset (" + "; ".join(problems) + "). "
            f"Received: element_spec={spec}"
        )


def train_batches(
    examples,
    preprocessor,
    *,
    batch_size,
    captions_per_image=1,
    shuffle_buffer=1024,
    seed=0,
    repeat=False,
    long_caption_words=0,
    long_caption_repeats=1,
):
    """Builds teacher-forcing batches for `keras.Model.fit`, one per (image, caption) pair.

    The model's preprocessor is the path: each image is resized once
    (`preprocessor.resize`), then paired with each of its captions; captions
    that normalise to "" are skipped. Pairs are shuffled (`shuffle_buffer`
    pairs, deterministic for a given `seed`), batched with
    `drop_remainder=True` so every batch has the static shape XLA wants, and
    tokenized per batch (`preprocessor.tokenize`: with `<image>` markers
    before each caption for an interleaved model, after its prompt for
    examples with "prompts").

    With `captions_per_image=k > 1`, an image goes into a batch once with `k`
    of its captions, in consecutive rows of "tokens": the batch has
    `batch_size // k` images, and the `Captioner` encodes each image (and
    projects its cross-attention keys and values) once for its `k` captions.
    An image with `n` captions gives `ceil(n / k)` such groups per pass, so
    every caption is seen; the last group is filled up with the image's
    first captions again.

    Args:
        examples: an examples dataset (see the module docstring).
        preprocessor: the model's preprocessor (`CaptionerPreprocessor` or
            `MultiImagePreprocessor`): its `resize`, `tokenize`, and
            `image_size` S and `sequence_length` T. Its tokenizer pads with 0.
        batch_size: int. Batch size B, in captions.
        captions_per_image: int. Captions read with each image in a batch,
            k; must divide `batch_size`.
        shuffle_buffer: int. Shuffle buffer size in pairs (in groups of `k`
            captions when `k > 1`); 0 or None keeps the input order. A pair's
            image is shared with its image's other pairs, so the buffer costs
            about `shuffle_buffer / captions per image` images of `S * S * 3`
            float32.
        seed: int or None. Shuffle seed; None reshuffles differently each run.
        repeat: bool. Repeat forever (reshuffling each pass); then give
            `fit` a `steps_per_epoch`. With a `seed`, every iterator yields
            the same stream, so `.skip(n)` gives exactly the batches from
            position `n` on (resuming a run).

    Returns:
        A `tf.data.Dataset` of `(inputs, labels)`:

            inputs = {"images": float32 (B // k, S, S, 3) in [0, 255],
                      "tokens": int32 (B, T)}   # [START] w1 w2 ... [END] [PAD]...[:-1]
            labels = int32 (B, T)               # w1 w2 ... [END] [PAD]...

        `labels[:, i] == packed[:, i + 1]` where `tokens[:, i] == packed[:, i]`;
        padded label positions are 0 (ignore them, e.g. `ignore_class=0`).

    Example:

    >>> batches = train_batches(coco_examples("train"), model.preprocessor, batch_size=64)
    >>> model.fit(batches, epochs=1)
    """
    _check_examples(examples)
    check_positive_int("batch_size", batch_size)
    check_positive_int("captions_per_image", captions_per_image)
    if batch_size % captions_per_image:
        raise ValueError(
            "`captions_per_image` must divide `batch_size`. Received: "
            f"batch_size={batch_size}, captions_per_image={captions_per_image}"
        )
    if shuffle_buffer is not None:
        check_positive_int("shuffle_buffer", shuffle_buffer, minimum=0)
    check_positive_int("long_caption_words", long_caption_words, minimum=0)
    check_positive_int("long_caption_repeats", long_caption_repeats)
    k = captions_per_image

    prompted = "prompts" in examples.element_spec

    def resize_and_keep_captions(example):
        captions = example["captions"]
        normalized = tf_normalize_caption(captions)
        kept = tf.strings.length(normalized) > 0
        # Each caption with its prompt (a question before its answer), or "".
        prompts = example["prompts"] if prompted else tf.zeros_like(captions)
        texts = tf.stack([tf.boolean_mask(prompts, kept), tf.boolean_mask(captions, kept)], 1)
        repeats = _caption_repeats(normalized, long_caption_words, long_caption_repeats)
        texts = tf.repeat(texts, tf.boolean_mask(repeats, kept), axis=0)
        return preprocessor.resize(_image_of(example)), texts

    def groups_of_captions(image, texts):
        # (ceil(n / k), k, 2) (prompt, caption) rows, cycling; k = 1 gives each once.
        count = tf.shape(texts)[0]
        groups = (count + k - 1) // k
        index = tf.range(groups * k) % tf.maximum(count, 1)
        grouped = tf.reshape(tf.gather(texts, index), (groups, k, 2))
        return tf.data.Dataset.zip(
            tf.data.Dataset.from_tensors(image).repeat(),
            tf.data.Dataset.from_tensor_slices(grouped),
        )

    def to_model_inputs(images, texts):
        texts = tf.reshape(texts, (-1, 2))  # (B // k, k, 2) -> (B, 2), per image
        tokens, labels = preprocessor.tokenize(texts[:, 1], texts[:, 0] if prompted else None)
        return {"images": images, "tokens": tokens}, labels

    pairs = examples.map(resize_and_keep_captions, num_parallel_calls=AUTOTUNE)
    pairs = pairs.flat_map(groups_of_captions)
    if shuffle_buffer and repeat and seed is not None:
        # Built inside flat_map, the shuffle's seed state is new for each
        # iterator, so every iterator reads the same stream and `skip(n)`
        # resumes it exactly (Keras opens a second iterator on JAX and PyTorch).
        source = pairs
        pairs = tf.data.Dataset.range(1).flat_map(
            lambda _: source.shuffle(
                shuffle_buffer, seed=seed, reshuffle_each_iteration=True
            ).repeat()
        )
    else:
        if shuffle_buffer:
            pairs = pairs.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            pairs = pairs.repeat()
    batches = pairs.batch(batch_size // k, drop_remainder=True)
    batches = batches.map(to_model_inputs, num_parallel_calls=AUTOTUNE)
    return batches.prefetch(AUTOTUNE)


def text_rows(examples, scene_context=False):
    """The `(prompt, caption, loss on the prompt)` text rows of `text_batches`: see there."""
    spec = examples.element_spec

    def rows(example):
        captions = example["captions"]
        prompts = example["prompts"] if "prompts" in spec else tf.zeros_like(captions)
        learn = tf.ones_like(captions, tf.bool)
        if "scene_captions" in spec:
            more = example["scene_captions"]
            if scene_context:
                prompts, captions = (tf.concat([prompts, with_scene(prompts, more)], 0),
                                     tf.concat([captions, captions], 0))
                learn = tf.concat([learn, tf.zeros_like(learn)], 0)
            prompts = tf.concat([prompts, tf.zeros_like(more)], 0)
            captions = tf.concat([captions, more], 0)
            learn = tf.concat([learn, tf.ones_like(more, tf.bool)], 0)
        return tf.data.Dataset.from_tensor_slices((prompts, captions, learn))

    return examples.flat_map(rows)


def with_scene(prompts, scene_captions):
    """Each prompt after a caption of its scene: prompt `i` after caption `i mod n`."""
    picked = tf.gather(scene_captions, tf.range(tf.size(prompts)) % tf.size(scene_captions))
    return tf.strings.join([picked, prompts], separator=" ")


def text_batches(examples, tokenizer, *, sequence_length, batch_size, shuffle_buffer=10000,
                 seed=0, repeat=False, scene_context=False):
    """Language-model batches of an examples dataset's text alone, no images.

    Every caption after its prompt (with the loss on the prompt too: the
    model learns the questions as well as the answers) and every
    "scene_captions" entry (`vlm.datasets.shapes.questions.as_prompted`), each its own
    row: `prompt [START] caption [END]` (`prompted_captions`). With
    `scene_context`, every prompt also comes once more after a caption of
    its scene (`with_scene`), where its answer follows from the text; those
    rows' loss falls on the answer alone, so that the few answer tokens are
    what they teach (reading the scene), not the scene caption again.

    Returns:
        A `tf.data.Dataset` of `({"tokens": int32 (B, T)}, labels int32 (B, T))`.
    """
    check_positive_int("sequence_length", sequence_length)
    check_positive_int("batch_size", batch_size)
    texts = text_rows(examples, scene_context)
    if shuffle_buffer:
        texts = texts.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        texts = texts.repeat()

    def pack(prompts, captions, learn):
        tokens, labels = prompted_captions(tokenizer, prompts, captions, sequence_length,
                                           loss_on_prompt=learn)
        return {"tokens": tokens}, labels

    texts = texts.batch(batch_size, drop_remainder=True)
    return texts.map(pack, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _image_of(example):
    """The example's image, or its images `(num_images, H, W, 3)`."""
    return example["images"] if "images" in example else example["image"]


def _caption_repeats(captions, long_caption_words, long_caption_repeats):
    """int32 (n,): how often each caption is read per pass; 1 for all when the lever is off."""
    if not long_caption_words or long_caption_repeats == 1:
        return tf.ones_like(captions, tf.int32)
    words = tf.cast(tf.strings.split(captions).row_lengths(), tf.int32)
    return tf.where(words >= long_caption_words, long_caption_repeats, 1)


def count_pairs(examples, captions_per_image=1, long_caption_words=0, long_caption_repeats=1):
    """Number of (image, caption) pairs `train_batches` makes of an examples dataset.

    Captions that normalise to "" are not counted (`train_batches` skips
    them); long captions count as often as they are read. With
    `captions_per_image=k`, each image's count is rounded up to a multiple of
    k, as `train_batches` fills its last group.
    """
    check_positive_int("captions_per_image", captions_per_image)
    k = captions_per_image

    def count(example):
        normalized = tf_normalize_caption(example["captions"])
        kept = tf.strings.length(normalized) > 0
        repeats = _caption_repeats(normalized, long_caption_words, long_caption_repeats)
        pairs = tf.reduce_sum(tf.where(kept, repeats, 0))
        return (pairs + k - 1) // k * k

    counts = examples.map(count)
    return int(counts.reduce(np.int64(0), lambda total, n: total + tf.cast(n, tf.int64)))


def _padding_value(spec):
    """-1 for signed ints and floats, 0 for unsigned ints, "" for strings, False for bools."""
    dtype = spec.dtype
    if dtype == tf.string:
        return tf.constant("", tf.string)
    if dtype == tf.bool:
        return tf.constant(False)
    if dtype.is_unsigned:
        return tf.constant(0, dtype)
    return tf.constant(-1, dtype)


def eval_batches(examples, preprocessor, *, batch_size, max_references=5):
    """Builds evaluation batches: each image once, with all its references.

    Keys other than "image" and "captions" pass through unchanged, batched
    with `padded_batch`: variable-length components (for example the shapes
    dataset's "objects") are padded with -1 for signed integers and floats,
    0 for unsigned integers, "" for strings and False for booleans. The last
    batch may be smaller (no `drop_remainder`).

    Args:
        examples: an examples dataset (see the module docstring).
        preprocessor: the model's preprocessor: its `resize` to its
            `image_size` S.
        batch_size: int. Batch size B.
        max_references: int. References kept per image R; fewer are padded
            with "" and more are truncated (COCO has 5, a few images 6-7).

    Returns:
        A `tf.data.Dataset` of dicts:

            {"images":   float32 (B, S, S, 3) in [0, 255],
             "captions": tf.string (B, R), padded with "",
             "image_id": (B,) as in the examples,
             ...other example keys, padded as above}

    Example:

    >>> for batch in eval_batches(coco_examples("val"), model.preprocessor, batch_size=32):
    ...     predictions = generate(model, batch["images"])
    """
    _check_examples(examples)
    check_positive_int("batch_size", batch_size)
    check_positive_int("max_references", max_references)

    def prepare(example):
        example = dict(example)
        example["images"] = preprocessor.resize(_image_of(example))
        example.pop("image", None)
        captions = example["captions"][:max_references]
        captions = tf.pad(
            captions, [[0, max_references - tf.shape(captions)[0]]], constant_values=""
        )
        example["captions"] = tf.ensure_shape(captions, [max_references])
        return example

    prepared = examples.map(prepare, num_parallel_calls=AUTOTUNE)
    padding_values = tf.nest.map_structure(_padding_value, prepared.element_spec)
    batches = prepared.padded_batch(batch_size, padding_values=padding_values)
    return batches.prefetch(AUTOTUNE)
