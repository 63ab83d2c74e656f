"""The three shapes datasets as TFDS builders, generated offline: captions, changes and questions.

One pattern serves the three: a `ShapesConfig` of sizes and seed (its name,
e.g. "s64_tr20000_va1000_te1000_seed0", is derived from them), a builder
whose examples come from its language's generator with the images PNG-encoded,
and a loader that prepares the dataset on first use behind one progress line.
The builder and config names are those of the caches already prepared.

    ShapesCaptions   `vlm.datasets.shapes.captions.generate_examples`       load_shapes
    ShapesChange     `vlm.datasets.shapes.changes.generate_change_examples` load_shapes_change
    ShapesQA         `vlm.datasets.shapes.questions.generate_qa_examples`   load_shapes_qa
"""

import contextlib
import dataclasses
import io
import logging
import os
import pathlib
import sys

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
import tqdm

from vlm.data import paths
from vlm.datasets.shapes.captions import generate_examples
from vlm.datasets.shapes.changes import generate_change_examples
from vlm.datasets.shapes.questions import generate_qa_examples
from vlm.datasets.shapes.vocabulary import CHANGE_TYPES
from vlm.datasets.shapes.vocabulary import COLORS
from vlm.datasets.shapes.vocabulary import QUESTION_TYPES
from vlm.datasets.shapes.vocabulary import SHAPES
from vlm.datasets.shapes.vocabulary import SIZES
from vlm.utils.argument_checks import check_positive_int

SPLITS = ("train", "validation", "test")


def split_seed(seed, split):
    """The example-stream seed of one split, so the splits never repeat each other.

    Args:
        seed: int, the dataset seed.
        split: one of "train", "validation", "test".

    Returns:
        int.
    """
    return int(np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(1)[0])


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Sizes and seed of one variant of a shapes dataset; `name` is derived from them.

    Args:
        image_size: int, side of the square images in pixels.
        train_size: int, number of training examples (images, or image
            pairs for the change dataset).
        validation_size: int, number of validation examples.
        test_size: int, number of test examples.
        seed: int, dataset seed.
    """

    name: str = dataclasses.field(default="", init=False)
    image_size: int = 64
    train_size: int = 20000
    validation_size: int = 1000
    test_size: int = 1000
    seed: int = 0

    def __post_init__(self):
        for field in ("image_size", "train_size", "validation_size", "test_size"):
            check_positive_int(field, getattr(self, field))
        check_positive_int("seed", self.seed, minimum=0)
        if self.image_size < 16:
            raise ValueError(
                f"`image_size` must be at least 16. Received: image_size={self.image_size}")
        self.name = (f"s{self.image_size}_tr{self.train_size}_va{self.validation_size}"
                     f"_te{self.test_size}_seed{self.seed}")

    def split_size(self, split):
        """Number of examples in `split`."""
        return getattr(self, f"{split}_size")


def objects_feature():
    """The TFDS feature of a scene's objects, as `scene_features` writes them.

    Returns:
        `tfds.features.Sequence` of `shape`, `color`, `size` ClassLabels and
        `x`, `y` float32 centres.
    """
    return tfds.features.Sequence({
        "shape": tfds.features.ClassLabel(names=SHAPES),
        "color": tfds.features.ClassLabel(names=list(COLORS)),
        "size": tfds.features.ClassLabel(names=SIZES),
        "x": np.float32,
        "y": np.float32,
    })


def _encode_png(image):
    """PNG bytes of a uint8 image.

    PIL at compression level 1 is several times faster than TFDS' own encoder
    for arrays, and gives smaller files on these noisy images than level 6.
    """
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


class _ShapesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What the three builders share: sizes from the config, examples from a generator.

    A builder says what its examples hold (`_features`) and where they come
    from (`_examples(num_examples, seed, image_size)`, a generator of the
    languages beside this module); `_encode` turns the generator's images into
    PNG bytes.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    # TFDS 4.9.10 works this path out through `importlib_resources`, a package
    # it does not declare (tensorflow/datasets#11212); give it directly.
    code_path = pathlib.Path(__file__)
    # Called once per generated example while preparing (`load_prepared`'s progress line).
    on_example = None

    def _info(self):
        return self.dataset_info_from_configs(description=self.DESCRIPTION,
                                              features=self._features(self.builder_config))

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split):
        config = self.builder_config
        examples = self._examples(config.split_size(split), split_seed(config.seed, split),
                                  config.image_size)
        for example in examples:
            if self.on_example is not None:
                self.on_example()
            yield example["image_id"], self._encode(example)

    def _encode(self, example):
        return {**example, "image": _encode_png(example["image"])}


class ShapesCaptions(_ShapesBuilder):
    """TFDS builder of the shapes captioning dataset; generates everything locally.

    Example:

    ```python
    builder = ShapesCaptions(config=builder_config(ShapesCaptions, image_size=32,
                                                   train_size=100),
                             data_dir="/tmp/tfds")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    train = builder.as_dataset(split="train")
    ```
    """

    BUILDER_CONFIGS = [ShapesConfig()]
    DESCRIPTION = "Procedurally generated coloured shapes with relational captions."
    _examples = staticmethod(generate_examples)

    def _features(self, config):
        size = config.image_size
        return tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "image_id": tfds.features.Scalar(np.int64),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "objects": objects_feature(),
        })


class ShapesChange(_ShapesBuilder):
    """TFDS builder of the shapes change dataset (image pairs); generates everything locally."""

    BUILDER_CONFIGS = [ShapesConfig()]
    DESCRIPTION = "Pairs of procedurally generated shapes scenes, captioned with the change."
    _examples = staticmethod(generate_change_examples)

    def _features(self, config):
        size = config.image_size
        return tfds.features.FeaturesDict({
            "images": tfds.features.Sequence(tfds.features.Image(shape=(size, size, 3)),
                                             length=2),
            "image_id": tfds.features.Scalar(np.int64),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "change": tfds.features.Text(),
            "change_type": tfds.features.ClassLabel(names=CHANGE_TYPES),
            "before": objects_feature(),
            "after": objects_feature(),
        })

    def _encode(self, example):
        return {**example, "images": [_encode_png(image) for image in example["images"]]}


class ShapesQA(_ShapesBuilder):
    """TFDS builder of the shapes QA dataset; generates everything locally."""

    BUILDER_CONFIGS = [ShapesConfig()]
    DESCRIPTION = "Procedurally generated coloured shapes with questions and answers."
    _examples = staticmethod(generate_qa_examples)

    def _features(self, config):
        size, count = config.image_size, len(QUESTION_TYPES)
        return tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "image_id": tfds.features.Scalar(np.int64),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "objects": objects_feature(),
            "questions": tfds.features.Sequence(tfds.features.Text(), length=count),
            "answers": tfds.features.Sequence(tfds.features.Text(), length=count),
            "question_types": tfds.features.Sequence(
                tfds.features.ClassLabel(names=QUESTION_TYPES), length=count),
        })


def builder_config(builder_class, image_size=64, train_size=20000, validation_size=1000,
                   test_size=1000, seed=0):
    """The config of `builder_class` for these sizes and seed, made on the fly.

    TFDS refuses a new config object named like a registered one, so the
    registered default is returned where the names match.

    Args:
        builder_class: `ShapesCaptions`, `ShapesChange` or `ShapesQA`.
        image_size: int, side of the square images in pixels.
        train_size: int, number of training examples.
        validation_size: int, number of validation examples.
        test_size: int, number of test examples.
        seed: int, dataset seed.

    Returns:
        `ShapesConfig`.
    """
    config = ShapesConfig(image_size=image_size, train_size=train_size,
                          validation_size=validation_size, test_size=test_size, seed=seed)
    return builder_class.builder_configs.get(config.name, config)


def load_shapes(split, *, data_dir=None, **sizes):
    """Loads a split of the shapes captioning dataset, generating it offline on first use.

    Args:
        split: "train", "validation" or "test" (TFDS split slicing such as
            "train[:10%]" also works).
        data_dir: TFDS data directory. Defaults to `vlm.data.paths.tfds_data_dir()`
            (`$VLM_CACHE_DIR/tensorflow_datasets`, else under `~/.cache/vlm`).
        **sizes: `image_size`, `train_size`, `validation_size`, `test_size`
            and `seed`, as `builder_config` takes them.

    Returns:
        `tf.data.Dataset`, in TFDS' fixed shuffled order, of dicts: `image`
        uint8 `(S, S, 3)`, `image_id` int64 scalar, `captions` string
        `(num_captions,)` and `objects`, a dict of `(num_objects,)` tensors:
        `shape`, `color`, `size` int64 class indices into `SHAPES`,
        `COLORS`, `SIZES` and `x`, `y` float32 centres in pixels.
    """
    return load_prepared(ShapesCaptions, builder_config(ShapesCaptions, **sizes), split,
                         data_dir, "shapes dataset")


def load_shapes_change(split, *, data_dir=None, **sizes):
    """Loads a split of the shapes change dataset, generating it offline on first use.

    Args:
        split, data_dir, **sizes: as `load_shapes` takes them (sizes count
            image pairs).

    Returns:
        `tf.data.Dataset`, in TFDS' fixed shuffled order, of dicts: `images`
        uint8 `(2, S, S, 3)` (before, after), `image_id` int64 scalar,
        `captions` string `(num_captions,)`, `change` string scalar (the
        canonical change), `change_type` int64 class index into
        `CHANGE_TYPES`, and `before`, `after` dicts of `(num_objects,)`
        tensors as `objects` in `load_shapes`.
    """
    return load_prepared(ShapesChange, builder_config(ShapesChange, **sizes), split,
                         data_dir, "shapes change dataset", unit=" pairs")


def load_shapes_qa(split, *, data_dir=None, **sizes):
    """Loads a split of the shapes QA dataset, generating it offline on first use.

    Args:
        split, data_dir, **sizes: as `load_shapes` takes them.

    Returns:
        `tf.data.Dataset`, in TFDS' fixed shuffled order, of dicts: `image`
        uint8 `(S, S, 3)`, `image_id` int64 scalar, `captions` string
        `(num_captions,)`, `objects` as in `load_shapes`, `questions` and
        `answers` string `(6,)`, and `question_types` int64 `(6,)`, class
        indices into `QUESTION_TYPES` (always 0..5 in order).
    """
    return load_prepared(ShapesQA, builder_config(ShapesQA, **sizes), split, data_dir,
                         "shapes QA dataset")


def load_prepared(builder_class, config, split, data_dir, name, unit=" images"):
    """A split of a locally generated TFDS dataset, prepared offline on first use.

    The preparation shows one progress line, "Preparing `name` (S px) in
    DIR", and TFDS' expected notices are kept out of the log.

    Args:
        builder_class: `ShapesCaptions`, `ShapesChange` or `ShapesQA`.
        config: the builder config.
        split: the split (TFDS slicing works).
        data_dir: TFDS data directory, or None for `paths.tfds_data_dir()`.
        name: what the progress line calls the dataset.
        unit: what the progress line counts.
    """
    with _without_expected_tfds_warnings():
        builder = builder_class(config=config,
                                data_dir=os.fspath(data_dir or paths.tfds_data_dir()))
        if not builder.is_prepared():
            _prepare(builder, f"Preparing {name} ({config.image_size}px) in {builder.data_dir}",
                     total=sum(config.split_size(s) for s in SPLITS), unit=unit)
        return builder.as_dataset(split=split)


# What TFDS warns about a builder config made on the fly (`builder_config`) and
# a dataset not prepared yet: both expected here, so kept out of the log.
# TFDS' own Sequence(Image) feature (the change pairs) also reads the
# `FeatureConnector.dtype` it deprecates.
_EXPECTED_TFDS_WARNINGS = ("Using custom data configuration", "has no dataset_info.json",
                           "`FeatureConnector.dtype` is deprecated")


class _DropExpectedTfdsWarnings(logging.Filter):
    def filter(self, record):
        return not any(text in record.getMessage() for text in _EXPECTED_TFDS_WARNINGS)


@contextlib.contextmanager
def _without_expected_tfds_warnings():
    """Drops `_EXPECTED_TFDS_WARNINGS` from TFDS' logger (absl's); the rest passes."""
    absl_logger, expected = logging.getLogger("absl"), _DropExpectedTfdsWarnings()
    absl_logger.addFilter(expected)
    try:
        yield
    finally:
        absl_logger.removeFilter(expected)


def _prepare(builder, description, total, unit=" images"):
    """Writes the dataset's files behind one progress line on stdout.

    TFDS would print two notices and a progress bar per split and per shuffle:
    its bars are turned off and its notices (stdout) dropped meanwhile.
    """
    # In a log file (no TTY) the bar is rewritten every 15 s, not 10 times a second.
    progress = tqdm.tqdm(total=total, desc=description, unit=unit, file=sys.stdout,
                         mininterval=0.1 if sys.stdout.isatty() else 15)
    builder.on_example = lambda: progress.update(1)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    finally:
        tfds.display_progress_bar(True)
        builder.on_example = None
        progress.close()
