"""The "shapes change" dataset: two images of a shapes scene, captioned with what changed.

After CLEVR-Change (Park et al., 2019). Every example is generated from
`np.random.default_rng([seed, index])`. The *before* scene is a
`vlm.data.shapes` scene of 1-3 objects; the *after* scene differs from it by
one change, drawn uniformly among the types the scene allows:

    none         nothing changes
    moved        an object moves so that its relation to another one (the
                 anchor) changes; needs 2 objects or more
    appeared     a new object, its (size, colour, shape) unused, is placed;
                 needs fewer than 3 objects
    disappeared  an object is removed; needs 2 objects or more, so the after
                 scene is never empty
    color        an object takes a colour that no object of its size and
                 shape has

Objects keep the placement rules of `vlm.data.shapes` (no overlap, a clear
dominant axis per pair) in both scenes. Two distractors keep pixel differencing
from solving the task: every object the change leaves alone is nudged by up to
`JITTER` of the image size (at least one pixel) per axis wherever the rules and
all of its relations still hold, and the after image is drawn with a new
background, tint, colour jitter and noise.

Reference captions follow a small grammar (lowercase, no punctuation; the
words are `vlm.change_vocab`'s and `vlm.scene_vocab`'s):

    object := SIZE COLOR SHAPE                      e.g. "small red circle"
    none:        "nothing changed" | "no change" | "the scene is the same"
    moved:       "the" object MOVED REL "the" object
    appeared:    ("a" | "a new") object ("appeared" | "was added")
    disappeared: "the" object ("disappeared" | "is gone" | "was removed")
    color:       "the" object ("turned" | "became" | "changed to") COLOR
    MOVED  := "moved" | "was moved" | "is now"

REL is a wording of the moved object's new relation to the anchor (see
`RELATION_PHRASES`), e.g. "the small red circle moved to the left of the large
blue square". Every change has 3 wordings or more; an example keeps 3-5 of
them. `canonical_change` writes a change as one string
("moved|small red circle|left of|large blue square") and
`vlm.metrics.change.parse_change_caption` reads a caption back into it.

`ShapesChange` wraps the generator as a TFDS builder that prepares offline, and
`load_shapes_change` returns a split as a `tf.data.Dataset`.
"""

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from vlm.change_vocab import APPEARED_ARTICLES
from vlm.change_vocab import CHANGE_TYPES
from vlm.change_vocab import CHANGE_VERBS
from vlm.change_vocab import NO_CHANGE_CAPTIONS
from vlm.change_vocab import canonical_change
from vlm.data.shapes import _ALL_TRIPLES
from vlm.data.shapes import SPLITS
from vlm.data.shapes import ShapesCaptionsConfig
from vlm.data.shapes import _encode_png
from vlm.data.shapes import _margin
from vlm.data.shapes import _placement_ok
from vlm.data.shapes import generate_scene
from vlm.data.shapes import load_prepared
from vlm.data.shapes import objects_feature
from vlm.data.shapes import render_scene
from vlm.data.shapes import scene_features
from vlm.data.shapes import split_seed
from vlm.scene_vocab import COLORS
from vlm.scene_vocab import RELATION_PHRASES
from vlm.scene_vocab import RELATIONS
from vlm.scene_vocab import dominant_relation

__all__ = [
    "CHANGE_TYPES", "JITTER", "generate_change", "change_captions", "canonical_change",
    "generate_change_examples", "ShapesChangeConfig", "ShapesChange", "shapes_change_config",
    "load_shapes_change",
]

# Largest nudge of an unchanged object per axis, as a fraction of the image size.
JITTER = 0.02
# Random positions tried per placement before giving up on it.
_PLACEMENT_TRIES = 200


def _triple(obj):
    return (obj["size"], obj["color"], obj["shape"])


def _others(objects, i):
    """Indices of all objects but the `i`-th."""
    return [k for k in range(len(objects)) if k != i]


def _place(obj, others, rng, image_size, accept=None):
    """`obj` at a random position that keeps the placement rules with `others`, or None.

    `accept(candidate)`, when given, must also hold.
    """
    margin = _margin(obj["size"], image_size)
    for _ in range(_PLACEMENT_TRIES):
        x, y = rng.integers(margin, image_size - margin, size=2)
        candidate = {**obj, "x": float(x), "y": float(y)}
        if _placement_ok(candidate, others, image_size) and (accept is None or accept(candidate)):
            return candidate
    return None


def _move(objects, rng, image_size):
    """One object moved so that its dominant relation to another one changes."""
    pairs = [(i, j) for i in range(len(objects)) for j in range(len(objects)) if i != j]
    for p in rng.permutation(len(pairs)):
        i, j = pairs[p]
        mover, anchor = objects[i], objects[j]
        others = objects[:i] + objects[i + 1:]
        targets = [r for r in RELATIONS if r != dominant_relation(mover, anchor)]
        # A relation drawn first, then a place for it, so the new relations come out balanced.
        for t in rng.permutation(len(targets)):
            relation = targets[t]
            moved = _place(mover, others, rng, image_size,
                           accept=lambda c, r=relation: dominant_relation(c, anchor) == r)
            if moved is not None:
                change = {"object": _triple(mover), "relation": relation,
                          "anchor": _triple(anchor)}
                return objects[:i] + [moved] + objects[i + 1:], change, _others(objects, i)
    return None


def _appear(objects, rng, image_size):
    """A new object of an unused (size, colour, shape) placed among the others."""
    used = {_triple(obj) for obj in objects}
    free = [triple for triple in _ALL_TRIPLES if triple not in used]
    size, color, shape = free[int(rng.integers(len(free)))]
    new = _place({"shape": shape, "color": color, "size": size}, objects, rng, image_size)
    if new is None:
        return None
    return objects + [new], {"object": _triple(new)}, list(range(len(objects)))


def _disappear(objects, rng, image_size):
    """One object removed."""
    del image_size
    i = int(rng.integers(len(objects)))
    rest = objects[:i] + objects[i + 1:]
    return rest, {"object": _triple(objects[i])}, list(range(len(rest)))


def _recolor(objects, rng, image_size):
    """One object in a colour no object of its size and shape has."""
    del image_size
    i = int(rng.integers(len(objects)))
    obj, used = objects[i], {_triple(other) for other in objects}
    free = [c for c in COLORS if (obj["size"], c, obj["shape"]) not in used]
    new_color = free[int(rng.integers(len(free)))]
    after = objects[:i] + [{**obj, "color": new_color}] + objects[i + 1:]
    return after, {"object": _triple(obj), "new_color": new_color}, _others(objects, i)


def _no_change(objects, rng, image_size):
    """Nothing changed."""
    del rng, image_size
    return list(objects), {}, list(range(len(objects)))


# Per change type: the least and most objects the before scene may have, and the change:
# `(objects, rng, image_size) -> (after objects, change fields, indices of the untouched
# after objects)`, or None where it finds no place.
_CHANGES = {
    "none": (1, 3, _no_change),
    "moved": (2, 3, _move),
    "appeared": (1, 2, _appear),
    "disappeared": (2, 3, _disappear),
    "color": (1, 3, _recolor),
}


def _jitter(objects, indices, rng, image_size):
    """Nudges `objects[i]` for `i` in `indices` (in place) where rules and relations hold."""
    reach = max(1, int(round(JITTER * image_size)))
    for i in indices:
        obj = objects[i]
        others = objects[:i] + objects[i + 1:]
        dx, dy = rng.integers(-reach, reach + 1, size=2)
        candidate = {**obj, "x": obj["x"] + float(dx), "y": obj["y"] + float(dy)}
        margin = _margin(obj["size"], image_size)
        inside = all(margin <= candidate[axis] < image_size - margin for axis in ("x", "y"))
        if (inside and _placement_ok(candidate, others, image_size)
                and all(dominant_relation(candidate, other) == dominant_relation(obj, other)
                        for other in others)):
            objects[i] = candidate


def generate_change(rng, image_size=64):
    """Samples a before scene, one change of it and the after scene.

    Args:
        rng: `np.random.Generator`.
        image_size: int, side of the square images in pixels.

    Returns:
        `(before, after, change)`: `before` and `after` are scene graphs
        `{"objects": [...]}` as from `vlm.data.shapes.generate_scene` (an
        object keeps its index unless one disappears before it; an appeared
        object comes last), and `change` is `{"type": str, "object": (size,
        color, shape) or None, "relation": str or None, "anchor": (size,
        color, shape) or None, "new_color": str or None}`. `object` is the
        changed object as it was before (None for "none"); `relation`, its
        new relation to `anchor`, is set for "moved" only, `new_color` for
        "color" only.
    """
    before = generate_scene(rng, image_size)
    objects = before["objects"]
    kinds = [kind for kind, (least, most, _) in _CHANGES.items()
             if least <= len(objects) <= most]
    while True:  # a type that finds no place (rare) is dropped; "none" always succeeds
        kind = kinds[int(rng.integers(len(kinds)))]
        result = _CHANGES[kind][2](objects, rng, image_size)
        if result is not None:
            break
        kinds.remove(kind)
    after, fields, unchanged = result
    _jitter(after, unchanged, rng, image_size)
    change = {"type": kind, "object": None, "relation": None, "anchor": None, "new_color": None}
    change.update(fields)
    return before, {"objects": after}, change


def _wordings(change):
    """Every reference caption of a change, in the grammar of the module docstring."""
    kind = change["type"]
    if kind == "none":
        return list(NO_CHANGE_CAPTIONS)
    subject = " ".join(change["object"])
    verbs = CHANGE_VERBS[kind]
    if kind == "moved":
        anchor = " ".join(change["anchor"])
        return [f"the {subject} {verb} {phrase} the {anchor}"
                for verb in verbs for phrase in RELATION_PHRASES[change["relation"]]]
    if kind == "appeared":
        return [f"{article} {subject} {verb}" for article in APPEARED_ARTICLES for verb in verbs]
    if kind == "color":
        return [f"the {subject} {verb} {change['new_color']}" for verb in verbs]
    return [f"the {subject} {verb}" for verb in verbs]


def change_captions(change, rng, num_captions):
    """Distinct reference captions of a change, in the grammar of the module docstring.

    Args:
        change: dict as returned by `generate_change`.
        rng: `np.random.Generator` choosing the wordings.
        num_captions: int, how many distinct captions to aim for.

    Returns:
        list of `num_captions` distinct strings in random order, or fewer
        where the change has fewer wordings (at least 3 always).
    """
    wordings = _wordings(change)
    return [wordings[i] for i in rng.permutation(len(wordings))[:num_captions]]


def generate_change_examples(num_examples, seed, image_size=64):
    """Yields examples `0 .. num_examples - 1`, each determined by `(seed, index)` alone.

    Args:
        num_examples: int, number of examples (image pairs).
        seed: int, seed of the example stream.
        image_size: int, side of the square images in pixels.

    Yields:
        dicts `{"image_id": int, "images": uint8 (2, S, S, 3) [before,
        after], "captions": list of 3-5 str, "change": str (canonical),
        "change_type": str, "before", "after": objects dicts as in
        `vlm.data.shapes.generate_examples`}`.
    """
    for index in range(num_examples):
        rng = np.random.default_rng([seed, index])
        before, after, change = generate_change(rng, image_size)
        # Two renderings in a row: new background, tint, colour jitter and noise for the after one.
        images = np.stack([render_scene(before, rng, image_size),
                           render_scene(after, rng, image_size)])
        captions = change_captions(change, rng, int(rng.integers(3, 6)))
        yield {"image_id": index, "images": images, "captions": captions,
               "change": canonical_change(change), "change_type": change["type"],
               "before": scene_features(before), "after": scene_features(after)}


@dataclasses.dataclass(eq=False)
class ShapesChangeConfig(ShapesCaptionsConfig):
    """Sizes and seed of one variant of the shapes change dataset; `name` is derived from them.

    Args:
        image_size: int, side of the square images in pixels.
        train_size: int, number of training examples (image pairs).
        validation_size: int, number of validation examples.
        test_size: int, number of test examples.
        seed: int, dataset seed.
    """


class ShapesChange(tfds.core.GeneratorBasedBuilder):
    """TFDS builder of the shapes change dataset; generates everything locally.

    Example:

    ```python
    builder = ShapesChange(config=shapes_change_config(image_size=32, train_size=100),
                           data_dir="/tmp/tfds")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    train = builder.as_dataset(split="train")
    ```
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [ShapesChangeConfig()]
    # As `ShapesCaptions`: TFDS 4.9.10 cannot work this path out itself.
    code_path = pathlib.Path(__file__)
    # Called once per generated example while preparing (`load_shapes_change`' progress line).
    on_example = None

    def _info(self):
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description="Pairs of procedurally generated shapes scenes, captioned with the change.",
            features=tfds.features.FeaturesDict({
                "images": tfds.features.Sequence(tfds.features.Image(shape=(size, size, 3)),
                                                 length=2),
                "image_id": tfds.features.Scalar(np.int64),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "change": tfds.features.Text(),
                "change_type": tfds.features.ClassLabel(names=CHANGE_TYPES),
                "before": objects_feature(),
                "after": objects_feature(),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split):
        config = self.builder_config
        examples = generate_change_examples(config.split_size(split),
                                            split_seed(config.seed, split), config.image_size)
        for example in examples:
            if self.on_example is not None:
                self.on_example()
            yield example["image_id"], {
                **example, "images": [_encode_png(image) for image in example["images"]]}


def shapes_change_config(image_size=64, train_size=20000, validation_size=1000, test_size=1000,
                         seed=0):
    """The builder config for these sizes and seed (the registered one where the names match).

    Args:
        image_size: int, side of the square images in pixels.
        train_size: int, number of training examples.
        validation_size: int, number of validation examples.
        test_size: int, number of test examples.
        seed: int, dataset seed.

    Returns:
        `ShapesChangeConfig`.
    """
    config = ShapesChangeConfig(image_size=image_size, train_size=train_size,
                                validation_size=validation_size, test_size=test_size, seed=seed)
    return ShapesChange.builder_configs.get(config.name, config)


def load_shapes_change(split, *, image_size=64, train_size=20000, validation_size=1000,
                       test_size=1000, seed=0, data_dir=None):
    """Loads a split of the shapes change dataset, generating it offline on first use.

    Args:
        split: "train", "validation" or "test" (TFDS split slicing such as
            "train[:10%]" also works).
        image_size: int, side of the square images in pixels.
        train_size: int, number of training examples.
        validation_size: int, number of validation examples.
        test_size: int, number of test examples.
        seed: int, dataset seed.
        data_dir: TFDS data directory. Defaults to `vlm.data.paths.tfds_data_dir()`
            (`$VLM_CACHE_DIR/tensorflow_datasets`, else under `~/.cache/vlm`).

    Returns:
        `tf.data.Dataset`, in TFDS' fixed shuffled order, of dicts: `images`
        uint8 `(2, S, S, 3)` (before, after), `image_id` int64 scalar,
        `captions` string `(num_captions,)`, `change` string scalar (the
        canonical change), `change_type` int64 class index into
        `CHANGE_TYPES`, and `before`, `after` dicts of `(num_objects,)`
        tensors as `objects` in `vlm.data.shapes.load_shapes`.
    """
    config = shapes_change_config(image_size, train_size, validation_size, test_size, seed)
    return load_prepared(ShapesChange, config, split, data_dir, "shapes change dataset",
                         unit=" pairs")
