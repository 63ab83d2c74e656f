"""The "shapes" captioning dataset: coloured shapes on a noisy background, captioned with relations.

Every example is generated from `np.random.default_rng([seed, index])`, so any
example can be regenerated on its own and the same seed gives the same bytes.
An image holds 1-3 objects, each a (size, colour, shape) triple unique within
the image, placed without overlap and far enough apart that each pair has a
clear dominant axis. Reference captions follow a small regular grammar
(lowercase, no punctuation; `PREFIX` is one of `CAPTION_PREFIXES`, possibly
empty):

    object  := "a" SIZE COLOR SHAPE           e.g. "a small red circle"
    1 object:  PREFIX object
    2 objects: PREFIX object REL object
    3 objects: PREFIX object REL object "and" CLAUSE
    CLAUSE  := object REL "the" SIZE COLOR SHAPE | "the" SIZE COLOR SHAPE REL object

REL is a wording of "left of", "right of", "above" or "below" (see
`RELATION_PHRASES`) along the pair's dominant axis; the second clause relates
the third object to one of the first two ("the ..." names it again).
`vlm.metrics.grounded.parse_caption` reads these captions back.

`ShapesCaptions` wraps the generator as a TFDS builder that prepares offline,
and `load_shapes` returns a split as a `tf.data.Dataset`.
"""

import contextlib
import dataclasses
import functools
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
from vlm.scene_vocab import CAPTION_PREFIXES
from vlm.scene_vocab import COLORS
from vlm.scene_vocab import RELATION_PHRASES
from vlm.scene_vocab import RELATIONS
from vlm.scene_vocab import SHAPES
from vlm.scene_vocab import SIZES
from vlm.scene_vocab import dominant_relation
from vlm.validation import check_positive_int

__all__ = [
    "COLORS", "SHAPES", "SIZES", "RELATIONS", "RELATION_PHRASES", "CAPTION_PREFIXES",
    "generate_scene", "render_scene", "scene_captions", "generate_examples",
    "scene_features", "scene_from_features", "objects_feature", "split_seed",
    "ShapesCaptionsConfig", "ShapesCaptions", "shapes_config", "load_shapes", "load_prepared",
]

# Object half-extent as a fraction of the image size: ~6 and ~10 px at 64 px.
SIZE_RADIUS = {"small": 0.10, "large": 0.16}
# Fractions of the image size: the free gap between object bounding boxes, the
# least centre distance along a pair's dominant axis, and how much the dominant
# axis must exceed the other one, so "left of" vs "above" is never a close call.
GAP = 0.04
MIN_AXIS_DISTANCE = 0.15
AXIS_LEAD = 0.10
SPLITS = ("train", "validation", "test")

_ALL_TRIPLES = [(size, color, shape) for size in SIZES for color in COLORS for shape in SHAPES]


def _radius(size, image_size):
    return SIZE_RADIUS[size] * image_size


def _margin(size, image_size):
    """Least distance in whole pixels from an object's centre to the image border."""
    return int(np.ceil(_radius(size, image_size))) + 1


def _placement_ok(candidate, placed, image_size):
    """Whether `candidate` keeps its gap to, and a clear relation with, every placed object."""
    for other in placed:
        reach = _radius(candidate["size"], image_size) + _radius(other["size"], image_size)
        dx, dy = abs(candidate["x"] - other["x"]), abs(candidate["y"] - other["y"])
        # Shapes lie inside their bounding boxes: boxes apart on one axis cannot overlap.
        if max(dx, dy) - reach < GAP * image_size:
            return False
        if max(dx, dy) < MIN_AXIS_DISTANCE * image_size:
            return False
        if abs(dx - dy) < AXIS_LEAD * image_size:
            return False
    return True


def generate_scene(rng, image_size=64):
    """Samples a scene graph of 1-3 distinct, non-overlapping objects.

    Args:
        rng: `np.random.Generator`.
        image_size: int, side of the square image in pixels.

    Returns:
        `{"objects": [{"shape", "color", "size", "x", "y"}, ...]}` with the
        centre `x`, `y` in pixels (whole numbers, as floats).
    """
    num_objects = int(rng.integers(1, 4))
    triples = [_ALL_TRIPLES[i] for i in rng.choice(len(_ALL_TRIPLES), num_objects, replace=False)]
    while True:  # restart when an object finds no place; succeeds within a few tries
        placed = []
        for size, color, shape in triples:
            margin = _margin(size, image_size)
            for _ in range(100):
                x, y = rng.integers(margin, image_size - margin, size=2)
                candidate = {"shape": shape, "color": color, "size": size,
                             "x": float(x), "y": float(y)}
                if _placement_ok(candidate, placed, image_size):
                    placed.append(candidate)
                    break
            else:
                break
        if len(placed) == num_objects:
            return {"objects": placed}


@functools.lru_cache(maxsize=8)
def _upsample_matrix(image_size, grid):
    """`(image_size, grid)` bilinear interpolation weights from a coarse grid to pixels."""
    position = np.linspace(0, grid - 1, image_size)
    weights = np.maximum(0.0, 1.0 - np.abs(position[:, None] - np.arange(grid)[None, :]))
    return weights.astype(np.float32)


def _background(rng, image_size):
    """A low-contrast, near-grey background: tint, gradient and smooth blotches, float32 HxWx3."""
    grid = 5
    level = rng.uniform(90, 160) + rng.uniform(-12, 12, size=3)
    angle, slope = rng.uniform(0, 2 * np.pi), rng.uniform(0, 30)
    ramp = np.linspace(-0.5, 0.5, image_size, dtype=np.float32)
    gradient = slope * (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None])
    coarse = rng.uniform(-15, 15, size=(grid, grid, 1)) + rng.uniform(-4, 4, size=(grid, grid, 3))
    up = _upsample_matrix(image_size, grid)
    blotches = (up @ coarse.transpose(2, 0, 1) @ up.T).transpose(1, 2, 0)  # (S, S, 3)
    return (level + gradient[..., None] + blotches).astype(np.float32)


def _shape_mask(obj, image_size):
    """Boolean HxW mask of the pixels `obj` covers (pixel (i, j) sits at x=j, y=i)."""
    r = _radius(obj["size"], image_size)
    coords = np.arange(image_size, dtype=np.float32)
    dx = coords[None, :] - obj["x"]
    dy = coords[:, None] - obj["y"]
    if obj["shape"] == "circle":
        return dx**2 + dy**2 <= r**2
    if obj["shape"] == "square":
        # 0.85 r brings the square's area closer to the circle's.
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if obj["shape"] == "triangle":
        # Apex at the top, base at the bottom of the bounding box.
        return (np.abs(dx) <= (dy + r) / 2) & (dy <= r)
    raise ValueError(f"Unknown shape. Expected one of {SHAPES}. Received: shape={obj['shape']!r}")


def render_scene(scene, rng, image_size=64):
    """Draws a scene graph on a noisy background.

    Object colours are jittered slightly per object and the whole image gets
    per-pixel noise, so exact RGB values carry no shortcut.

    Args:
        scene: `{"objects": [...]}` as returned by `generate_scene`.
        rng: `np.random.Generator` for background, jitter and noise.
        image_size: int, side of the square image in pixels.

    Returns:
        uint8 array `(image_size, image_size, 3)`.
    """
    image = _background(rng, image_size)
    for obj in scene["objects"]:
        color = np.asarray(COLORS[obj["color"]], np.float32) + rng.uniform(-12, 12, size=3)
        image[_shape_mask(obj, image_size)] = color
    # Luminance noise, shared by the channels, keeps the PNGs small.
    image += rng.normal(0.0, 5.0, size=(image_size, image_size, 1))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _object_phrase(obj, article="a"):
    return f"{article} {obj['size']} {obj['color']} {obj['shape']}"


def _clause(subject, obj, rng, subject_article="a", object_article="a"):
    """`subject REL obj` with a randomly chosen wording of their true relation."""
    phrases = RELATION_PHRASES[dominant_relation(subject, obj)]
    phrase = phrases[int(rng.integers(len(phrases)))]
    subject_phrase = _object_phrase(subject, subject_article)
    return f"{subject_phrase} {phrase} {_object_phrase(obj, object_article)}"


def _random_caption(objects, rng):
    """One reference caption with random order, wording and prefix."""
    order = [objects[i] for i in rng.permutation(len(objects))]
    if len(order) == 1:
        body = _object_phrase(order[0])
    else:
        body = _clause(order[0], order[1], rng)
    if len(order) == 3:
        anchor = order[int(rng.integers(2))]
        if rng.random() < 0.5:
            body += " and " + _clause(order[2], anchor, rng, object_article="the")
        else:
            body += " and " + _clause(anchor, order[2], rng, subject_article="the")
    return CAPTION_PREFIXES[int(rng.integers(len(CAPTION_PREFIXES)))] + body


def scene_captions(scene, rng, num_captions):
    """Distinct reference captions for a scene, in the grammar of the module docstring.

    Args:
        scene: `{"objects": [...]}` as returned by `generate_scene`.
        rng: `np.random.Generator` for orders, wordings and prefixes.
        num_captions: int, how many distinct captions to aim for.

    Returns:
        list of `num_captions` distinct strings, or fewer where the scene
        has fewer distinct captions.
    """
    captions = []
    for _ in range(20 * num_captions):
        caption = _random_caption(scene["objects"], rng)
        if caption not in captions:
            captions.append(caption)
            if len(captions) == num_captions:
                break
    return captions


def generate_examples(num_images, seed, image_size=64):
    """Yields examples `0 .. num_images - 1`, each determined by `(seed, index)` alone.

    Args:
        num_images: int, number of examples.
        seed: int, seed of the example stream.
        image_size: int, side of the square images in pixels.

    Yields:
        dicts `{"image_id": int, "image": uint8 (S, S, 3), "captions": list of
        3-5 str, "objects": {"shape", "color", "size": list of str, "x", "y":
        list of float}}`.
    """
    for index in range(num_images):
        rng = np.random.default_rng([seed, index])
        scene = generate_scene(rng, image_size)
        image = render_scene(scene, rng, image_size)
        captions = scene_captions(scene, rng, int(rng.integers(3, 6)))
        yield {"image_id": index, "image": image, "captions": captions,
               "objects": scene_features(scene)}


def scene_features(scene):
    """Turns a scene graph into the `objects` features of an example (one list per key).

    Args:
        scene: `{"objects": [...]}` as returned by `generate_scene`.

    Returns:
        `{"shape", "color", "size": list of str, "x", "y": list of float}`;
        `scene_from_features` turns it back.
    """
    return {key: [obj[key] for obj in scene["objects"]]
            for key in ("shape", "color", "size", "x", "y")}


def scene_from_features(objects):
    """Turns decoded TFDS `objects` features back into a scene graph.

    Args:
        objects: dict with `"shape"`, `"color"`, `"size"` (ClassLabel ints or
            names) and `"x"`, `"y"` (floats), one entry per object: NumPy
            arrays, tensors or lists.

    Returns:
        `{"objects": [{"shape", "color", "size", "x", "y"}, ...]}` as from
        `generate_scene`.
    """
    names = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES}

    def label(key, value):
        if isinstance(value, (bytes, np.bytes_)):
            return value.decode()
        if isinstance(value, str):
            return value
        return names[key][int(value)]

    columns = {key: np.asarray(objects[key]).tolist()
               for key in ("shape", "color", "size", "x", "y")}
    return {"objects": [
        {**{key: label(key, columns[key][i]) for key in names},
         "x": float(columns["x"][i]), "y": float(columns["y"][i])}
        for i in range(len(columns["shape"]))
    ]}


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
class ShapesCaptionsConfig(tfds.core.BuilderConfig):
    """Sizes and seed of one variant of the shapes dataset; `name` is derived from them.

    Args:
        image_size: int, side of the square images in pixels.
        train_size: int, number of training images.
        validation_size: int, number of validation images.
        test_size: int, number of test images.
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
        """Number of images in `split`."""
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


class ShapesCaptions(tfds.core.GeneratorBasedBuilder):
    """TFDS builder of the shapes captioning dataset; generates everything locally.

    Example:

    ```python
    builder = ShapesCaptions(config=shapes_config(image_size=32, train_size=100),
                             data_dir="/tmp/tfds")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    train = builder.as_dataset(split="train")
    ```
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [ShapesCaptionsConfig()]
    # TFDS 4.9.10 works this path out through `importlib_resources`, a package
    # it does not declare (tensorflow/datasets#11212); give it directly.
    code_path = pathlib.Path(__file__)
    # Called once per generated example while preparing (`load_shapes`' progress line).
    on_example = None

    def _info(self):
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description="Procedurally generated coloured shapes with relational captions.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 3)),
                "image_id": tfds.features.Scalar(np.int64),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "objects": objects_feature(),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split):
        config = self.builder_config
        examples = generate_examples(config.split_size(split), split_seed(config.seed, split),
                                     config.image_size)
        for example in examples:
            if self.on_example is not None:
                self.on_example()
            yield example["image_id"], {**example, "image": _encode_png(example["image"])}


def shapes_config(image_size=64, train_size=20000, validation_size=1000, test_size=1000, seed=0):
    """The builder config for these sizes and seed, made on the fly.

    TFDS refuses a new config object named like a registered one, so the
    registered default is returned where the names match.

    Args:
        image_size: int, side of the square images in pixels.
        train_size: int, number of training images.
        validation_size: int, number of validation images.
        test_size: int, number of test images.
        seed: int, dataset seed.

    Returns:
        `ShapesCaptionsConfig`.
    """
    config = ShapesCaptionsConfig(image_size=image_size, train_size=train_size,
                                  validation_size=validation_size, test_size=test_size, seed=seed)
    return ShapesCaptions.builder_configs.get(config.name, config)


def load_shapes(split, *, image_size=64, train_size=20000, validation_size=1000,
                test_size=1000, seed=0, data_dir=None):
    """Loads a split of the shapes dataset, generating it offline on first use.

    Args:
        split: "train", "validation" or "test" (TFDS split slicing such as
            "train[:10%]" also works).
        image_size: int, side of the square images in pixels.
        train_size: int, number of training images.
        validation_size: int, number of validation images.
        test_size: int, number of test images.
        seed: int, dataset seed.
        data_dir: TFDS data directory. Defaults to `vlm.data.paths.tfds_data_dir()`
            (`$VLM_CACHE_DIR/tensorflow_datasets`, else under `~/.cache/vlm`).

    Returns:
        `tf.data.Dataset`, in TFDS' fixed shuffled order, of dicts: `image`
        uint8 `(S, S, 3)`, `image_id` int64 scalar, `captions` string
        `(num_captions,)` and `objects`, a dict of `(num_objects,)` tensors:
        `shape`, `color`, `size` int64 class indices into `SHAPES`,
        `COLORS`, `SIZES` and `x`, `y` float32 centres in pixels.
    """
    config = shapes_config(image_size, train_size, validation_size, test_size, seed)
    return load_prepared(ShapesCaptions, config, split, data_dir, "shapes dataset")


def load_prepared(builder_class, config, split, data_dir, name, unit=" images"):
    """A split of a locally generated TFDS dataset, prepared offline on first use.

    The preparation shows one progress line, "Preparing `name` (S px) in
    DIR", and TFDS' expected notices are kept out of the log.

    Args:
        builder_class: `ShapesCaptions` or another builder of a config with
            `image_size` and `split_size(split)`.
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


# What TFDS warns about a builder config made on the fly (`shapes_config`) and
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
