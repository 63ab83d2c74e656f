"""Words of the shapes scene language, shared by the data generator and the grounded metrics.

`vlm.data.shapes` renders and describes scenes with these words and
`vlm.metrics.grounded` reads captions back with them (`vlm.data.shapes_qa`
and `vlm.metrics.qa` share the question types); keeping them here lets the
metrics run without importing the data package (and TensorFlow).
"""

import dataclasses

# Saturated colours that stay apart in hue from each other and from the
# near-grey background the generator draws them on.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 200),
    "cyan": (40, 200, 210),
    "orange": (250, 135, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")

# Relations in normalised form. Image coordinates: x grows to the right and
# y grows downward, so "a above b" means a's centre y < b's centre y.
RELATIONS = ("left of", "right of", "above", "below")
INVERSE_RELATIONS = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
# The wordings reference captions use for each normalised relation. A parser
# only needs the normalised form: each variant ends with it.
RELATION_PHRASES = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below",),
}
# Optional openings of a reference caption; they carry no scene content.
CAPTION_PREFIXES = ("", "there is ", "a picture of ", "an image of ", "a photo of ")
# The kinds of question `vlm.data.shapes_qa` asks about a scene, one each per image, in this order.
QUESTION_TYPES = ("colour", "shape", "size", "count", "existence", "relation")


def dominant_relation(a, b):
    """The relation of object `a` to `b` along the axis where their centres differ most.

    The relation the shapes captions state (`vlm.data.shapes`) and the change
    scores check (`vlm.metrics.change`).
    """
    dx, dy = a["x"] - b["x"], a["y"] - b["y"]
    if abs(dx) > abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


@dataclasses.dataclass(frozen=True)
class SceneVocabulary:
    """The attribute words a caption parser recognises.

    Args:
        colors: colour names.
        shapes: shape names.
        sizes: size names.
    """

    colors: tuple = tuple(COLORS)
    shapes: tuple = SHAPES
    sizes: tuple = SIZES


DEFAULT_VOCABULARY = SceneVocabulary()
