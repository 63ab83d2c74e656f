"""The shapes caption language: scenes described with relations, and the caption examples.

Reference captions follow a small regular grammar (lowercase, no punctuation;
`PREFIX` is one of `CAPTION_PREFIXES`, possibly empty):

    object  := "a" SIZE COLOR SHAPE           e.g. "a small red circle"
    1 object:  PREFIX object
    2 objects: PREFIX object REL object
    3 objects: PREFIX object REL object "and" CLAUSE
    CLAUSE  := object REL "the" SIZE COLOR SHAPE | "the" SIZE COLOR SHAPE REL object

REL is a wording of "left of", "right of", "above" or "below" (see
`RELATION_PHRASES`) along the pair's dominant axis; the second clause relates
the third object to one of the first two ("the ..." names it again).
`vlm.metrics.grounded.parse_caption` reads these captions back.

Every example is generated from `np.random.default_rng([seed, index])`, so any
example can be regenerated on its own and the same seed gives the same bytes.
`vlm.datasets.shapes.builders.ShapesCaptions` writes them as a TFDS dataset.
"""

import numpy as np

from vlm.datasets.shapes.scene import generate_scene
from vlm.datasets.shapes.scene import render_scene
from vlm.datasets.shapes.scene import scene_features
from vlm.datasets.shapes.vocabulary import CAPTION_PREFIXES
from vlm.datasets.shapes.vocabulary import RELATION_PHRASES
from vlm.datasets.shapes.vocabulary import dominant_relation


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
