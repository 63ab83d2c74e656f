"""Shapes scenes: 1-3 coloured shapes placed apart, drawn on a noisy background.

A scene is a graph `{"objects": [{"shape", "color", "size", "x", "y"}, ...]}`:
each object a (size, colour, shape) triple unique within the scene, placed
without overlap and far enough apart that each pair has a clear dominant axis
(`vlm.datasets.shapes.vocabulary.dominant_relation`). Every number comes from
the `np.random.Generator` passed in, so the same generator state gives the
same scene and the same pixels. The languages beside this module describe
scenes (`captions`), changes between two of them (`changes`) and questions
about them (`questions`).
"""

import functools

import numpy as np

from vlm.datasets.shapes.vocabulary import COLORS
from vlm.datasets.shapes.vocabulary import SHAPES
from vlm.datasets.shapes.vocabulary import SIZES

# Object half-extent as a fraction of the image size: ~6 and ~10 px at 64 px.
SIZE_RADIUS = {"small": 0.10, "large": 0.16}
# Fractions of the image size: the free gap between object bounding boxes, the
# least centre distance along a pair's dominant axis, and how much the dominant
# axis must exceed the other one, so "left of" vs "above" is never a close call.
GAP = 0.04
MIN_AXIS_DISTANCE = 0.15
AXIS_LEAD = 0.10
# Random positions tried per placement before giving up on it.
PLACEMENT_TRIES = 100

ALL_TRIPLES = [(size, color, shape) for size in SIZES for color in COLORS for shape in SHAPES]


def triple(obj):
    """`(size, color, shape)` of an object: what makes it unique in its scene."""
    return (obj["size"], obj["color"], obj["shape"])


def radius(size, image_size):
    """An object's half-extent in pixels."""
    return SIZE_RADIUS[size] * image_size


def margin(size, image_size):
    """Least distance in whole pixels from an object's centre to the image border."""
    return int(np.ceil(radius(size, image_size))) + 1


def placement_ok(candidate, placed, image_size):
    """Whether `candidate` keeps its gap to, and a clear relation with, every placed object."""
    for other in placed:
        reach = radius(candidate["size"], image_size) + radius(other["size"], image_size)
        dx, dy = abs(candidate["x"] - other["x"]), abs(candidate["y"] - other["y"])
        # Shapes lie inside their bounding boxes: boxes apart on one axis cannot overlap.
        if max(dx, dy) - reach < GAP * image_size:
            return False
        if max(dx, dy) < MIN_AXIS_DISTANCE * image_size:
            return False
        if abs(dx - dy) < AXIS_LEAD * image_size:
            return False
    return True


def place(obj, others, rng, image_size, accept=None, tries=PLACEMENT_TRIES):
    """`obj` at a random position that keeps the placement rules with `others`, or None.

    `accept(candidate)`, when given, must also hold.
    """
    least = margin(obj["size"], image_size)
    for _ in range(tries):
        x, y = rng.integers(least, image_size - least, size=2)
        candidate = {**obj, "x": float(x), "y": float(y)}
        if placement_ok(candidate, others, image_size) and (accept is None or accept(candidate)):
            return candidate
    return None


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
    triples = [ALL_TRIPLES[i] for i in rng.choice(len(ALL_TRIPLES), num_objects, replace=False)]
    while True:  # restart when an object finds no place; succeeds within a few tries
        placed = []
        for size, color, shape in triples:
            candidate = place({"shape": shape, "color": color, "size": size}, placed, rng,
                              image_size)
            if candidate is None:
                break
            placed.append(candidate)
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
    r = radius(obj["size"], image_size)
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
