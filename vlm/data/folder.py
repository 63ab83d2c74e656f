"""A folder of images with a CSV or JSON Lines captions file as an examples dataset.

Broken captions files raise errors naming the file and line; bad images and
empty captions are skipped with a `SkippedInputWarning` that names them.
"""

import csv
import io
import pathlib
import sys
import warnings

import tensorflow as tf

from vlm.data.images import MAX_IMAGE_PIXELS
from vlm.data.images import ImageError
from vlm.data.images import decode_image
from vlm.data.images import read_image_header
from vlm.data.jsonl import check_field
from vlm.data.jsonl import line_error
from vlm.data.jsonl import read_jsonl
from vlm.data.jsonl import read_text


class SkippedInputWarning(UserWarning):
    """An image or caption of a captions folder was skipped; the message names it."""


def _warn(message):
    warnings.warn(message, SkippedInputWarning, stacklevel=3)


class _CaptionsFile:
    """Reads a captions file into {image name: [captions]}, raising errors that name file and
    line."""

    def __init__(self, path):
        self.path = path
        self.captions = {}  # image name -> list of captions, in file order
        self.lines = {}  # image name -> first line that names it
        self.empty = {}  # image name -> first line with an empty caption for it

    def error(self, line, message):
        return line_error(self.path, line, message)

    def add(self, line, image, caption):
        if not isinstance(image, str) or not image.strip():
            raise self.error(
                line, f"the image name must be a non-empty string. Received: {image!r}"
            )
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
                        start,
                        "the CSV header must name the columns 'image' and 'caption'. "
                        f"Received: {row}",
                    )
                continue
            if len(row) != len(header):
                hint = " (quote captions that contain commas)" if len(row) > len(header) else ""
                raise self.error(
                    start, f"expected {len(header)} columns {header}, found {len(row)}: {row}{hint}"
                )
            self.add(start, row[header.index("image")], row[header.index("caption")])

    def read_jsonl(self, lines):
        for line, record in read_jsonl(lines, name=self.path):
            if ("caption" in record) == ("captions" in record):
                raise self.error(
                    line,
                    "expected exactly one of the keys 'caption' and 'captions'. "
                    f"Received keys: {sorted(record)}",
                )
            if "caption" in record:
                captions = [record["caption"]]
            else:
                captions = record["captions"]
                check_field(self.path, line, "captions", captions, "strings")
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
    text = read_text(captions_file)
    if text.lstrip()[:1] == "{":
        reader.read_jsonl(io.StringIO(text, newline=""))
    else:
        reader.read_csv(text.splitlines(keepends=True))
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
    examples = dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
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
