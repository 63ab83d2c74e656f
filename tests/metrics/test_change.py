import pytest

from vlm.metrics.change import change_scores
from vlm.metrics.change import moved_breakdown
from vlm.metrics.change import parse_change_caption

MOVED = "moved|small red circle|left of|large blue square"


@pytest.mark.parametrize("caption, expected", [
    ("nothing changed", "none"),
    ("no change", "none"),
    ("the scene is the same", "none"),
    ("the small red circle moved left of the large blue square", MOVED),
    ("the small red circle moved to the left of the large blue square", MOVED),
    ("the small red circle was moved to the left of the large blue square", MOVED),
    ("the small red circle is now left of the large blue square", MOVED),
    ("the large cyan triangle is now below the small red circle",
     "moved|large cyan triangle|below|small red circle"),
    ("a large green triangle appeared", "appeared|large green triangle"),
    ("a new large green triangle was added", "appeared|large green triangle"),
    ("the small red circle disappeared", "disappeared|small red circle"),
    ("the small red circle is gone", "disappeared|small red circle"),
    ("the small red circle was removed", "disappeared|small red circle"),
    ("the small red circle turned blue", "color|small red circle|blue"),
    ("the small red circle became blue", "color|small red circle|blue"),
    ("the small red circle changed to blue", "color|small red circle|blue"),
    # Case, punctuation and bytes do not matter.
    (b"The small red circle changed to blue.", "color|small red circle|blue"),
    # Parts left out stay empty.
    ("the red circle disappeared", "disappeared|red circle"),
    ("the small red circle moved to the right", "moved|small red circle||"),
    ("something turned", "color||"),
])
def test_parse_each_wording(caption, expected):
    assert parse_change_caption(caption) == expected


@pytest.mark.parametrize("caption", ["", "a small red circle", "a cat on a mat", b"\xff\xfe"])
def test_caption_without_a_change_parses_to_none(caption):
    assert parse_change_caption(caption) is None


def test_partial_credit():
    changes = [
        MOVED,
        MOVED,
        "color|small red circle|blue",
        "appeared|large green triangle",
        "disappeared|small red circle",
        "none",
        "none",
        "color|large purple square|red",
    ]
    captions = [
        # Exact.
        "the small red circle moved to the left of the large blue square",
        # Wrong relation: type and object right.
        "the small red circle moved above the large blue square",
        # Wrong new colour: type and object right.
        "the small red circle turned green",
        # Wrong object (size): type right only.
        "a small green triangle appeared",
        # Wrong type, right object.
        "the small red circle turned yellow",
        # Right: "none" needs no object.
        "no change",
        # Junk: wrong everywhere.
        "lorem ipsum",
        # Exact, given as bytes.
        b"the large purple square became red",
    ]
    scores = change_scores(captions, changes)
    assert scores == {
        "change_type_accuracy": 6 / 8,
        "change_object_accuracy": 5 / 8,
        "exact_change_accuracy": 3 / 8,
        "num_examples": 8,
        "exact_change_accuracy_none": 1 / 2,
        "exact_change_accuracy_moved": 1 / 2,
        "exact_change_accuracy_appeared": 0.0,
        "exact_change_accuracy_disappeared": 0.0,
        "exact_change_accuracy_color": 1 / 2,
    }


def test_wrong_anchor_is_object_right_but_not_exact():
    scores = change_scores(
        ["the small red circle moved left of the large green square"], [MOVED.encode()])
    assert scores["change_type_accuracy"] == 1.0
    assert scores["change_object_accuracy"] == 1.0
    assert scores["exact_change_accuracy"] == 0.0
    assert set(scores) == {"change_type_accuracy", "change_object_accuracy",
                           "exact_change_accuracy", "num_examples", "exact_change_accuracy_moved"}


def test_empty_and_mismatched_inputs():
    assert change_scores([], []) == {"change_type_accuracy": 0.0, "change_object_accuracy": 0.0,
                                     "exact_change_accuracy": 0.0, "num_examples": 0}
    with pytest.raises(ValueError, match=r"len\(captions\)=2, len\(changes\)=3"):
        change_scores(["no change", "no change"], ["none", "none", "none"])
    with pytest.raises(ValueError, match="change='grew'"):
        change_scores(["no change"], ["grew"])


def obj(size, color, shape, x, y):
    return {"size": size, "color": color, "shape": shape, "x": float(x), "y": float(y)}


def test_with_scenes_a_move_stated_against_another_true_anchor_is_exact():
    """The circle moved from the far left to the far right: it is now right of both others."""
    square, triangle = obj("large", "blue", "square", 30, 10), obj("small", "cyan", "triangle",
                                                                     32, 50)
    before = {"objects": [obj("small", "red", "circle", 5, 30), square, triangle]}
    after = {"objects": [obj("small", "red", "circle", 60, 30), square, triangle]}
    truth = "moved|small red circle|right of|large blue square"
    captions = ["the small red circle moved right of the large blue square",   # the reference
                "the small red circle is now right of the small cyan triangle",  # also true
                "the small red circle moved left of the small cyan triangle",   # false
                "the small red circle moved right of the small red circle",     # itself
                "the small red circle moved right of the large green square"]   # not there
    rows = [change_scores([c], [truth], scenes=[(before, after)]) for c in captions]
    assert [r["exact_change_accuracy"] for r in rows] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert change_scores(captions[1:2], [truth])["exact_change_accuracy"] == 0.0  # no scenes
    with pytest.raises(ValueError, match=r"len\(scenes\)=2, len\(changes\)=1"):
        change_scores(captions[:1], [truth], scenes=[(before, after)] * 2)


def test_moved_breakdown_puts_each_moved_caption_in_one_class():
    """The circle moved from the lower left to the top left: now above the triangle, and
    still left of the square."""
    square, triangle = obj("large", "blue", "square", 50, 10), obj("small", "cyan", "triangle",
                                                                     50, 55)
    before = {"objects": [obj("small", "red", "circle", 10, 45), square, triangle]}
    after = {"objects": [obj("small", "red", "circle", 15, 10), square, triangle]}
    truth = "moved|small red circle|above|small cyan triangle"
    cases = [
        ("the small red circle moved above the small cyan triangle", "right"),
        ("the small cyan triangle moved below the small red circle", "mover_anchor_swapped"),
        # True after the move, but it was true before it too.
        ("the small red circle moved left of the large blue square",
         "relation_unchanged_by_move"),
        ("the small red circle moved below the small cyan triangle", "wrong_relation"),
        ("the small red circle moved above the large green square", "wrong_object"),  # not there
        ("the small red circle moved to the left", "wrong_object"),  # no anchor
        # True of the scenes, but the square did not move.
        ("the large blue square moved above the small cyan triangle", "wrong_object"),
        ("the small red circle turned blue", "wrong_type"),
        ("lorem ipsum", "wrong_type"),
    ]
    # The circle of the scenes above, moved from the far left to the far right: right of
    # both others, so the triangle is as good an anchor as the square.
    far_before = {"objects": [obj("small", "red", "circle", 5, 30),
                              obj("large", "blue", "square", 30, 10),
                              obj("small", "cyan", "triangle", 32, 50)]}
    far_after = {"objects": [dict(far_before["objects"][0], x=60.0), *far_before["objects"][1:]]}
    captions = [caption for caption, _ in cases] + [
        "the small red circle is now right of the small cyan triangle", "no change"]
    changes = [truth] * len(cases) + ["moved|small red circle|right of|large blue square", "none"]
    scenes = [(before, after)] * len(cases) + [(far_before, far_after), (before, before)]
    for caption, outcome in cases:
        assert moved_breakdown([caption], [truth], [(before, after)])[outcome] == 1, caption
    breakdown = moved_breakdown(captions, changes, scenes)
    assert breakdown == {"examples": 10, "right": 2, "mover_anchor_swapped": 1,
                         "relation_unchanged_by_move": 1, "wrong_relation": 1,
                         "wrong_object": 3, "wrong_type": 2}
    scores = change_scores(captions, changes, scenes=scenes)
    assert scores["exact_change_accuracy_moved"] == breakdown["right"] / breakdown["examples"]
    assert moved_breakdown(["no change"], ["none"], [(before, before)])["examples"] == 0
