"""tf.data pipelines: example sources (COCO, a folder of images) and the batches `fit` eats.

Every source yields an *examples* dataset, one element per image, a dict with:

    "image":    uint8 (height, width, 3), any size
    "captions": tf.string (num_references,), at least one reference
    "image_id": scalar (int64 for COCO, the file name for folders)

plus any other keys a source adds (the shapes dataset adds "objects").
`train_batches` and `eval_batches` turn examples into model inputs; they work
unchanged under the TensorFlow, JAX and PyTorch Keras backends (Keras converts
tf.data batches for `fit`).
"""

import csv
import json
import pathlib
import sys
import warnings

import numpy as np
import tensorflow as tf

from vlm.data.images import MAX_IMAGE_PIXELS
from vlm.data.images import ImageError
from vlm.data.images import decode_image
from vlm.data.images import read_image_header
from vlm.data.images import preprocess_image
from vlm.data.paths import tfds_data_dir
from vlm.data.tokenizer import _check_int
from vlm.data.tokenizer import pack_captions
from vlm.data.tokenizer import tf_normalize_caption

AUTOTUNE = tf.data.AUTOTUNE
COCO_SPLITS = ("train", "val", "test", "restval")


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
        for key in ("image", "captions", "image_id"):
            if key not in spec:
                problems.append(f"missing key {key!r}")
        image, captions = spec.get("image"), spec.get("captions")
        if image is not None and (
            getattr(image, "dtype", None) != tf.uint8 or image.shape.rank != 3 or image.shape[-1] != 3
        ):
            problems.append("'image' must be uint8 (height, width, 3)")
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
    tokenizer,
    *,
    image_size,
    sequence_length,
    batch_size,
    captions_per_image=1,
    shuffle_buffer=1024,
    seed=0,
    repeat=False,
):
    """Builds teacher-forcing batches for `keras.Model.fit`, one per (image, caption) pair.

    Each image is resized once (`preprocess_image`), then paired with each of
    its captions; captions that normalise to "" are skipped. Pairs are
    shuffled (`shuffle_buffer` pairs, deterministic for a given `seed`),
    batched with `drop_remainder=True` so every batch has the static shape XLA
    wants, and tokenized per batch with `pack_captions`.

    With `captions_per_image=k > 1`, an image goes into a batch once with `k`
    of its captions, in consecutive rows of "tokens": the batch has
    `batch_size // k` images, and the `Captioner` encodes each image (and
    projects its cross-attention keys and values) once for its `k` captions.
    An image with `n` captions gives `ceil(n / k)` such groups per pass, so
    every caption is seen; the last group is filled up with the image's
    first captions again.

    Args:
        examples: an examples dataset (see the module docstring).
        tokenizer: a `CaptionTokenizer` ([PAD] must be id 0).
        image_size: int. Square image side S.
        sequence_length: int. Token sequence length T.
        batch_size: int. Batch size B, in captions.
        captions_per_image: int. Captions read with each image in a batch,
            k; must divide `batch_size`.
        shuffle_buffer: int. Shuffle buffer size in pairs (in groups of `k`
            captions when `k > 1`); 0 or None keeps the input order. A pair's image is shared with its image's other
            pairs, so the buffer costs about `shuffle_buffer / captions per
            image` images of `S * S * 3` float32.
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

    >>> batches = train_batches(coco_examples("train"), tokenizer,
    ...                         image_size=224, sequence_length=32, batch_size=64)
    >>> model.fit(batches, epochs=1)
    """
    _check_examples(examples)
    _check_int("image_size", image_size, 1)
    _check_int("sequence_length", sequence_length, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("captions_per_image", captions_per_image, 1)
    if batch_size % captions_per_image:
        raise ValueError(
            "`captions_per_image` must divide `batch_size`. Received: "
            f"batch_size={batch_size}, captions_per_image={captions_per_image}"
        )
    if shuffle_buffer is not None:
        _check_int("shuffle_buffer", shuffle_buffer, 0)
    k = captions_per_image

    def resize_and_keep_captions(example):
        captions = example["captions"]
        captions = tf.boolean_mask(captions, tf.strings.length(tf_normalize_caption(captions)) > 0)
        return preprocess_image(example["image"], image_size), captions

    def groups_of_captions(image, captions):
        # (ceil(n / k), k) captions, cycling; k = 1 gives each caption once.
        count = tf.shape(captions)[0]
        groups = (count + k - 1) // k
        index = tf.range(groups * k) % tf.maximum(count, 1)
        grouped = tf.reshape(tf.gather(captions, index), (groups, k))
        return tf.data.Dataset.zip(
            tf.data.Dataset.from_tensors(image).repeat(),
            tf.data.Dataset.from_tensor_slices(grouped),
        )

    def to_model_inputs(images, captions):
        captions = tf.reshape(captions, (-1,))  # (B // k, k) -> (B,), per image
        packed = pack_captions(tokenizer, captions, sequence_length)  # (B, T + 1)
        inputs = {"images": images, "tokens": packed[:, :-1]}
        return inputs, packed[:, 1:]

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


def count_pairs(examples, captions_per_image=1):
    """Number of (image, caption) pairs `train_batches` makes of an examples dataset.

    Captions that normalise to "" are not counted (`train_batches` skips
    them). With `captions_per_image=k`, each image's count is rounded up to a
    multiple of k, as `train_batches` fills its last group.
    """
    _check_int("captions_per_image", captions_per_image, 1)
    k = captions_per_image

    def count(example):
        kept = tf.strings.length(tf_normalize_caption(example["captions"])) > 0
        return (tf.reduce_sum(tf.cast(kept, tf.int32)) + k - 1) // k * k

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


def eval_batches(examples, *, image_size, batch_size, max_references=5):
    """Builds evaluation batches: each image once, with all its references.

    Keys other than "image" and "captions" pass through unchanged, batched
    with `padded_batch`: variable-length components (for example the shapes
    dataset's "objects") are padded with -1 for signed integers and floats,
    0 for unsigned integers, "" for strings and False for booleans. The last
    batch may be smaller (no `drop_remainder`).

    Args:
        examples: an examples dataset (see the module docstring).
        image_size: int. Square image side S.
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

    >>> for batch in eval_batches(coco_examples("val"), image_size=224, batch_size=32):
    ...     predictions = generate(model, batch["images"])
    """
    _check_examples(examples)
    _check_int("image_size", image_size, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("max_references", max_references, 1)

    def prepare(example):
        example = dict(example)
        example["images"] = preprocess_image(example.pop("image"), image_size)
        captions = example["captions"][:max_references]
        captions = tf.pad(captions, [[0, max_references - tf.shape(captions)[0]]], constant_values="")
        example["captions"] = tf.ensure_shape(captions, [max_references])
        return example

    prepared = examples.map(prepare, num_parallel_calls=AUTOTUNE)
    padding_values = tf.nest.map_structure(_padding_value, prepared.element_spec)
    batches = prepared.padded_batch(batch_size, padding_values=padding_values)
    return batches.prefetch(AUTOTUNE)


def coco_examples(split, *, data_dir=None, download=False, shuffle_files=False, seed=None):
    """Loads COCO Captions (Karpathy splits) from TensorFlow Datasets as examples.

    Reads the TFDS `coco_captions` dataset (COCO 2014 images, 5 or more
    references per image) and keeps "image", "image_id" (COCO's int64 id) and
    "captions" (the reference texts).

    Args:
        split: "train" (82,783 images in TFDS' Karpathy split), "val", "test"
            (5,000 each), "restval", or any TFDS split expression over those,
            such as "train+restval" or "val[:100]".
        data_dir: TFDS data folder. Defaults to `tfds_data_dir()`, that is
            `$VLM_CACHE_DIR/tensorflow_datasets` or
            `~/.cache/vlm/tensorflow_datasets`.
        download: bool. If True and the data is not prepared yet, TFDS
            downloads COCO 2014 (about 20 GB over the network) and prepares
            it. If False, missing data is an error.
        shuffle_files: bool. Read the TFDS shards in shuffled order, which
            mixes training images more than a shuffle buffer can.
        seed: int or None. Shard shuffling seed when `shuffle_files`.

    Returns:
        An examples dataset.

    Example:

    >>> examples = coco_examples("val", data_dir="/data/tfds")
    >>> next(iter(examples))["captions"].shape
    TensorShape([5])
    """
    import tensorflow_datasets as tfds  # Slow to import; only COCO needs it.

    data_dir = str(data_dir if data_dir is not None else tfds_data_dir())
    try:
        dataset = tfds.load(
            "coco_captions",
            split=split,
            data_dir=data_dir,
            try_gcs=False,
            download=download,
            shuffle_files=shuffle_files,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
    except (AssertionError, tfds.core.DatasetNotFoundError) as error:
        if download:
            raise
        raise ValueError(
            f"COCO Captions is not prepared in {data_dir} (split={split!r}). Pass "
            "download=True to download and prepare it (about 20 GB over the "
            f"network), or data_dir= the folder that holds it. TFDS said: {error}"
        ) from error

    def to_example(features):
        return {
            "image": features["image"],
            "image_id": features["image/id"],
            "captions": features["captions"]["text"],
        }

    return dataset.map(to_example, num_parallel_calls=AUTOTUNE)


class SkippedInputWarning(UserWarning):
    """An image or caption of a captions folder was skipped; the message names it."""


def _warn(message):
    warnings.warn(message, SkippedInputWarning, stacklevel=3)


class _CaptionsFile:
    """Reads a captions file into {image name: [captions]}, raising errors that name file and line."""

    def __init__(self, path):
        self.path = path
        self.captions = {}  # image name -> list of captions, in file order
        self.lines = {}  # image name -> first line that names it
        self.empty = {}  # image name -> first line with an empty caption for it

    def error(self, line, message):
        return ValueError(f"{self.path}, line {line}: {message}")

    def add(self, line, image, caption):
        if not isinstance(image, str) or not image.strip():
            raise self.error(line, f"the image name must be a non-empty string. Received: {image!r}")
        if not isinstance(caption, str):
            raise self.error(line, f"a caption must be a non-empty string. Received: {caption!r}")
        image = image.strip()
        if not caption.strip():
            # Noise in the data, not a broken file: skip it and go on.
            _warn(f"{self.path}, line {line}: skipping an empty caption of image {image!r}")
            self.empty.setdefault(image, line)
            return
        self.captions.setdefault(image, []).append(caption.strip())
        self.lines.setdefault(image, line)

    def read_csv(self, file):
        reader = csv.reader(file)
        header = None
        line = 1
        for row in reader:
            start, line = line, reader.line_num + 1
            if not row or not any(field.strip() for field in row):
                continue
            if header is None:
                header = [field.strip() for field in row]
                if "image" not in header or "caption" not in header:
                    raise self.error(
                        start, f"the CSV header must name the columns 'image' and 'caption'. Received: {row}"
                    )
                continue
            if len(row) != len(header):
                hint = " (quote captions that contain commas)" if len(row) > len(header) else ""
                raise self.error(
                    start, f"expected {len(header)} columns {header}, found {len(row)}: {row}{hint}"
                )
            self.add(start, row[header.index("image")], row[header.index("caption")])

    def read_jsonl(self, file):
        for line, text in enumerate(file, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise self.error(line, f"bad JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise self.error(line, f"expected a JSON object. Received: {text.strip()[:80]}")
            if ("caption" in record) == ("captions" in record):
                raise self.error(
                    line, f"expected exactly one of the keys 'caption' and 'captions'. Received keys: {sorted(record)}"
                )
            if "caption" in record:
                captions = [record["caption"]]
            else:
                captions = record["captions"]
                if not isinstance(captions, list) or not captions:
                    raise self.error(
                        line, f"'captions' must be a non-empty list of strings. Received: {captions!r}"
                    )
            for caption in captions:
                self.add(line, record.get("image"), caption)


def folder_examples(captions_file, image_dir=None, max_pixels=MAX_IMAGE_PIXELS):
    """Builds an examples dataset from a folder of images and a captions file.

    The captions file is either CSV with a header naming the columns `image`
    and `caption` (Flickr8k's captions.txt: one row per caption, captions with
    commas in double quotes), or JSON Lines with one object per line,
    `{"image": "x.jpg", "caption": "..."}` or
    `{"image": "x.jpg", "captions": ["...", "..."]}`; a file whose first
    non-blank character is `{` is read as JSON Lines. Several rows may name
    the same image: its captions are grouped, in file order.

    The whole file is read and checked before anything else happens. A
    broken file (not UTF-8, a malformed row, an empty image name, bad JSON,
    a caption that is not a string) raises a `ValueError` that names the
    captions file and the line, e.g.
    `captions.csv, line 7: expected 2 columns ['image', 'caption'], found 3`.

    Bad data is skipped instead, with a `SkippedInputWarning` naming the
    line and the image, and the rest goes on:

    - an empty caption (an image left with no caption is skipped);
    - an image that is missing, empty, not a JPEG/PNG/GIF/BMP/WebP file, or
      over `max_pixels` (a decompression bomb: the size is read from the
      header, nothing is decoded). Each file's header is read here;
    - an image that fails to decode when the dataset reads it (truncated or
      corrupt data past a good header). The dataset drops it, prints a
      warning naming it to stderr, and at the end of every pass prints how
      many images were skipped in all. Iterating never raises for it.

    If no image is left, a `ValueError` says so.

    Args:
        captions_file: path of the CSV or JSONL file.
        image_dir: folder the image names are relative to. Defaults to the
            captions file's folder.
        max_pixels: int or None. Images with more pixels are skipped.

    Returns:
        An examples dataset; "image_id" is the image name as written in the
        captions file. Images come in order of first appearance.

    Example:

    >>> examples = folder_examples("flickr8k/captions.txt", "flickr8k/Images")
    """
    captions_file = pathlib.Path(captions_file)
    if not captions_file.is_file():
        raise ValueError(f"captions file not found: {captions_file}")
    image_dir = pathlib.Path(image_dir) if image_dir is not None else captions_file.parent
    if not image_dir.is_dir():
        raise ValueError(f"image folder not found: {image_dir} (for {captions_file})")

    reader = _CaptionsFile(str(captions_file))
    raw = captions_file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise reader.error(
            line, f"not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
                  "save the captions file as UTF-8") from None
    first = text.lstrip()[:1]
    lines = text.splitlines(keepends=True)
    if first == "{":
        reader.read_jsonl(lines)
    else:
        reader.read_csv(lines)
    for name, line in reader.empty.items():
        if name not in reader.captions:
            _warn(f"{captions_file}, line {line}: skipping image {name!r}: it has no "
                  "non-empty caption")
    if not reader.captions:
        raise ValueError(f"{captions_file}: no captions found")

    names, paths = [], []
    for name, line in reader.lines.items():
        path = image_dir / name
        try:
            if not path.is_file():
                raise ImageError(f"not found in {image_dir}")
            read_image_header(path, max_pixels)
        except (ImageError, OSError) as error:
            _warn(f"{captions_file}, line {line}: skipping image {name!r}: {error}")
            continue
        names.append(name)
        paths.append(str(path))
    if not names:
        raise ValueError(
            f"{captions_file}: none of its {len(reader.lines)} images can be read from "
            f"{image_dir} (each one was named in a warning above)")
    refused = len(reader.lines) - len(names)

    # One extra record at the end (index == len(names)) marks the end of a
    # pass, where the count of skipped images is printed.
    dataset = tf.data.Dataset.from_tensor_slices(
        {
            "index": tf.range(len(names) + 1, dtype=tf.int64),
            "path": tf.constant(paths + [""], tf.string),
            "image_id": tf.constant(names + [""], tf.string),
            "captions": tf.ragged.constant([reader.captions[n] for n in names] + [[]],
                                           tf.string),
        }
    )
    end = len(names)

    def read(record):
        def decode():
            return decode_image(tf.io.read_file(record["path"]), max_pixels)

        return {
            "index": record["index"],
            "image": tf.cond(record["index"] == end,
                             lambda: tf.zeros([1, 1, 3], tf.uint8), decode),
            "image_id": record["image_id"],
            "captions": record["captions"],
        }

    # A file that fails to read or decode is dropped; `_report_skipped` names it.
    examples = dataset.map(read, num_parallel_calls=AUTOTUNE).ignore_errors()
    examples = examples.scan(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
        _report_skipped(str(captions_file), names, refused))
    examples = examples.filter(lambda example: example["index"] < end)
    return examples.map(lambda example: {k: v for k, v in example.items() if k != "index"})


def _report_skipped(captions_file, names, refused):
    """A `scan` function over read examples that names the ones dropped on the way.

    The state is (index expected next, images dropped so far this pass).
    Examples arrive in order, so a jump in "index" means that the images in
    between failed to read or decode. The end record (index == len(names))
    prints the pass's count, which includes the `refused` images that the
    listing skipped already.
    """
    end, total = len(names), len(names) + refused
    names = tf.constant(names, tf.string)

    def name_them(expected, index):
        missed = tf.gather(names, tf.range(expected, index))
        tf.print(tf.strings.reduce_join(
            f"warning: {captions_file}: skipping image '" + missed
            + "': it could not be read or decoded (truncated or corrupt)", separator="\n"),
            output_stream=sys.stderr)
        return tf.constant(0)

    def summary(skipped):
        tf.print(tf.strings.join([
            f"warning: {captions_file}: skipped ", tf.strings.as_string(skipped),
            f" of {total} images this pass ({refused} refused when listed, ",
            tf.strings.as_string(skipped - refused), " undecodable)"]),
            output_stream=sys.stderr)
        return tf.constant(0)

    def no_op():
        return tf.constant(0)

    def report(state, example):
        expected, dropped = state
        index = example["index"]
        dropped += index - expected
        named = tf.cond(index > expected, lambda: name_them(expected, index), no_op)
        with tf.control_dependencies([named]):
            skipped = dropped + refused
            counted = tf.cond((index == end) & (skipped > 0), lambda: summary(skipped), no_op)
        with tf.control_dependencies([counted]):
            return (index + 1, tf.identity(dropped)), example

    return report
