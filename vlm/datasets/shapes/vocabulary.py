"""Words of the shapes world's languages, shared by the generators and the metrics.

`vlm.datasets.shapes.captions` describes scenes with the scene words and
`vlm.metrics.grounded` reads captions back with them;
`vlm.datasets.shapes.changes` and `vlm.metrics.change` share the change words,
`vlm.datasets.shapes.questions` and `vlm.metrics.qa` the question types.
Plain Python: the metrics import it without TensorFlow.
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
# The kinds of question `vlm.datasets.shapes.questions` asks about a scene, one each per
# image, in this order.
QUESTION_TYPES = ("colour", "shape", "size", "count", "existence", "relation")

CHANGE_TYPES = ("none", "moved", "appeared", "disappeared", "color")
# The whole caption of an unchanged scene.
NO_CHANGE_CAPTIONS = ("nothing changed", "no change", "the scene is the same")
# The words after the changed object, per change type: "the small red circle
# moved left of ...", "... was added", "... is gone", "... turned blue".
CHANGE_VERBS = {
    "moved": ("moved", "was moved", "is now"),
    "appeared": ("appeared", "was added"),
    "disappeared": ("disappeared", "is gone", "was removed"),
    "color": ("turned", "became", "changed to"),
}
# The articles of an appeared object (the other changes name a known one: "the").
APPEARED_ARTICLES = ("a", "a new")


def dominant_relation(a, b):
    """The relation of object `a` to `b` along the axis where their centres differ most.

    The relation the shapes captions state (`vlm.datasets.shapes.captions`)
    and the change scores check (`vlm.metrics.change`).
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
