import pytest

from vlm.metrics.grounded import grounded_scores
from vlm.metrics.grounded import parse_caption
from vlm.metrics.grounded import relation_breakdown
from vlm.metrics.grounded import relation_holds
from vlm.metrics.grounded import score_caption


def obj(size, color, shape, x, y):
    return {"size": size, "color": color, "shape": shape, "x": x, "y": y}


# small red circle on the left, large blue square on the right, small green
# triangle in the middle below both.
RED = obj("small", "red", "circle", 10.0, 20.0)
BLUE = obj("large", "blue", "square", 50.0, 22.0)
GREEN = obj("small", "green", "triangle", 30.0, 55.0)
TWO = {"objects": [RED, BLUE]}
THREE = {"objects": [RED, BLUE, GREEN]}
KEYS = {"object_accuracy", "color_accuracy", "shape_accuracy", "size_accuracy",
        "relation_accuracy", "exact_scene_accuracy", "hallucination_rate"}


def assert_scores(captions, scenes, **expected):
    scores = grounded_scores(captions, scenes)
    assert set(scores) == KEYS
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value), key


def test_parse_reference_grammar():
    mentions, relations = parse_caption(
        "there is a small red circle to the left of a large blue square "
        "and a small green triangle below the large blue square")
    assert mentions == [("small", "red", "circle"), ("large", "blue", "square"),
                        ("small", "green", "triangle")]
    assert relations == [(0, "left of", 1), (2, "below", 1)]


def test_parse_missing_attributes_and_shapeless_mentions():
    mentions, relations = parse_caption("a red circle above a large blue thing")
    assert mentions == [(None, "red", "circle"), ("large", "blue", None)]
    assert relations == [(0, "above", 1)]


def test_parse_counts_a_fact_once_in_either_direction():
    mentions, relations = parse_caption(
        "a red circle left of a blue square and the blue square right of the red circle")
    assert len(mentions) == 2
    assert relations == [(0, "left of", 1)]


def test_relation_holds_by_the_dominant_axis_as_the_captions_are_written():
    assert relation_holds(RED, "left of", BLUE) and relation_holds(BLUE, "right of", RED)
    # Green is 20 px right of red and 35 px below it: "below", not "right of".
    assert relation_holds(RED, "above", GREEN) and relation_holds(GREEN, "below", RED)
    assert not relation_holds(GREEN, "right of", RED)
    # Red is 2 px higher than blue and 40 px to its left: only "left of".
    assert not relation_holds(RED, "above", BLUE)
    assert not relation_holds(RED, "left of", dict(RED))
    with pytest.raises(ValueError, match="relation='near'"):
        relation_holds(RED, "near", BLUE)


def test_perfect_caption():
    assert_scores(
        ["a small red circle left of a large blue square and a small green triangle below "
         "the large blue square"], [THREE],
        object_accuracy=1.0, color_accuracy=1.0, shape_accuracy=1.0, size_accuracy=1.0,
        relation_accuracy=1.0, exact_scene_accuracy=1.0, hallucination_rate=0.0)


def test_single_object_without_relation_adds_nothing_to_relation_accuracy():
    single = {"objects": [RED]}
    assert score_caption("a picture of a small red circle", [RED])["relations_total"] == 0
    # Pooled: the 1-object scene adds 0/0, the 2-object scene 1/1.
    assert_scores(["a small red circle", "a small red circle left of a large blue square"],
                  [single, TWO], relation_accuracy=1.0, exact_scene_accuracy=1.0)


def test_wrong_colour():
    # The green circle matches nothing by colour+shape: 1 of 2 objects found,
    # and it is a hallucination; by best agreement it still fits the red circle
    # on size and shape, so only colour is 1/2. The relation's subject is
    # unmatched, so 0 of 1 relation is right.
    counts = score_caption("a small green circle left of a large blue square", TWO["objects"])
    assert counts == {"objects": 2, "matched_objects": 1, "color_correct": 1,
                      "shape_correct": 2, "size_correct": 2, "relations_correct": 0,
                      "relations_total": 1, "mentions": 2, "hallucinated": 1,
                      "exact_scene": 0}
    assert_scores(["a small green circle left of a large blue square"], [TWO],
                  object_accuracy=0.5, color_accuracy=0.5, shape_accuracy=1.0,
                  size_accuracy=1.0, relation_accuracy=0.0, exact_scene_accuracy=0.0,
                  hallucination_rate=0.5)


def test_wrong_size_only():
    assert_scores(["a large red circle left of a large blue square"], [TWO],
                  object_accuracy=1.0, color_accuracy=1.0, shape_accuracy=1.0,
                  size_accuracy=0.5, relation_accuracy=1.0, exact_scene_accuracy=0.0,
                  hallucination_rate=0.0)


def test_missing_object():
    # Two of three objects named, one of two expected relations stated.
    assert_scores(["a small red circle left of a large blue square"], [THREE],
                  object_accuracy=2 / 3, color_accuracy=2 / 3, shape_accuracy=2 / 3,
                  size_accuracy=2 / 3, relation_accuracy=0.5, exact_scene_accuracy=0.0,
                  hallucination_rate=0.0)


def test_hallucinated_object():
    # A yellow square that is not there: 3 stated relations (denominator 3),
    # of which the two about real objects hold.
    assert_scores(
        ["a small red circle left of a large blue square and a small yellow square above "
         "the large blue square and a small green triangle below the small red circle"],
        [THREE],
        object_accuracy=1.0, color_accuracy=1.0, shape_accuracy=1.0, size_accuracy=1.0,
        relation_accuracy=2 / 3, exact_scene_accuracy=0.0, hallucination_rate=0.25)


def test_wrong_relation():
    # Red is 2 px higher than blue and 40 px to its left: every reference says
    # "left of", so "above" is the wrong axis and scores nothing.
    assert_scores(["a small red circle left of a large blue square"], [TWO],
                  relation_accuracy=1.0, exact_scene_accuracy=1.0)
    for wrong in ("above", "below", "right of"):
        assert_scores([f"a small red circle {wrong} a large blue square"], [TWO],
                      object_accuracy=1.0, relation_accuracy=0.0, exact_scene_accuracy=0.0,
                      hallucination_rate=0.0)
    # Right on one relation, wrong on the other.
    assert_scores(
        ["a small red circle left of a large blue square and a small green triangle above "
         "the small red circle"], [THREE],
        relation_accuracy=0.5, exact_scene_accuracy=0.0)


def test_inverse_phrasing_is_the_same_fact():
    forward = grounded_scores(["a small red circle left of a large blue square"], [TWO])
    inverse = grounded_scores(["a large blue square to the right of a small red circle"], [TWO])
    assert forward == inverse
    assert inverse["relation_accuracy"] == 1.0 and inverse["exact_scene_accuracy"] == 1.0


def test_pooling_over_captions():
    # Objects: 2 + 3 = 5, matched 2 + 2 = 4; relations 1/1 and 1/2.
    assert_scores(
        ["a small red circle left of a large blue square",
         "a small red circle left of a large blue square"], [TWO, THREE],
        object_accuracy=0.8, relation_accuracy=2 / 3, exact_scene_accuracy=0.5)


@pytest.mark.parametrize("junk", ["", "   ", "\U0001F600\U0001F47E", "left of above below",
                                  "the of and and", b"\xff\xfe", "ça là — 🙂 🔺"])
def test_junk_scores_zero_without_error(junk):
    mentions, relations = parse_caption(junk)
    assert mentions == [] and relations == []
    assert grounded_scores([junk], [THREE]) == dict.fromkeys(KEYS, 0.0)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="len\\(captions\\)=2, len\\(scenes\\)=1"):
        grounded_scores(["a", "b"], [TWO])


# Three in a row, 22 px apart, the middle one 2 px lower: every pair is "left
# of" / "right of".
YELLOW = obj("small", "yellow", "circle", 10.0, 30.0)
PURPLE = obj("large", "purple", "square", 32.0, 32.0)
CYAN = obj("small", "cyan", "triangle", 54.0, 30.0)
ROW = {"objects": [YELLOW, PURPLE, CYAN]}


def test_relation_breakdown_puts_each_wrong_relation_in_one_class():
    cases = [
        ({"objects": [RED]}, "a small red circle"),  # 1 object: no relation needed
        (TWO, "a small red circle left of a large blue square"),  # right
        (TWO, "a small red circle above a large blue square"),  # wrong axis
        (TWO, "a small red circle right of a large blue square"),  # wrong direction
        (TWO, "a small green circle left of a large blue square"),  # no green circle
        (TWO, "a small red circle left of a small red circle"),  # itself: no pair
        # Red is above green (35 px up, 20 px left), so "left of" is the wrong
        # axis, but red IS left of blue: true of another object. Blue above
        # green is right.
        (THREE, "a small red circle left of a small green triangle and a large blue square "
                "above the small green triangle"),
        (THREE, "a large blue square"),  # both relations missing
        # Purple is right of yellow (wrong direction) and left of cyan (true
        # of another object); cyan right of purple is right.
        (ROW, "a large purple square left of a small yellow circle and a small cyan triangle "
              "right of the large purple square"),
    ]
    scenes, captions = zip(*cases)
    breakdown = relation_breakdown(captions, scenes)
    assert breakdown == {
        "by_objects": {
            "1": {"scenes": 1, "relations_total": 0, "relations_correct": 0,
                  "relation_accuracy": 0.0, "exact_scene_accuracy": 1.0, "object_accuracy": 1.0},
            # Objects matched: 2 + 2 + 2 + 1 + 1 of 10.
            "2": {"scenes": 5, "relations_total": 5, "relations_correct": 1,
                  "relation_accuracy": 0.2, "exact_scene_accuracy": 0.2, "object_accuracy": 0.8},
            # Objects matched: 3 + 1 + 3 of 9.
            "3": {"scenes": 3, "relations_total": 6, "relations_correct": 2,
                  "relation_accuracy": pytest.approx(1 / 3), "exact_scene_accuracy": 0.0,
                  "object_accuracy": pytest.approx(7 / 9)},
        },
        "errors": {
            "object_misnamed": {"1": 0, "2": 2, "3": 0, "all": 2},
            "wrong_axis": {"1": 0, "2": 1, "3": 1, "all": 2},
            "wrong_direction": {"1": 0, "2": 1, "3": 1, "all": 2},
            "missing": {"1": 0, "2": 0, "3": 2, "all": 2},
            "true_of_another_object": {"1": 0, "2": 0, "3": 2, "all": 2},
        },
    }
    # Each relation not right is in exactly one class.
    for group, row in breakdown["by_objects"].items():
        wrong = sum(breakdown["errors"][kind][group] for kind in
                    ("object_misnamed", "wrong_axis", "wrong_direction", "missing"))
        assert row["relations_total"] == row["relations_correct"] + wrong
    # Pooled over the groups, the same counts as grounded_scores.
    scores = grounded_scores(captions, scenes)
    assert scores["relation_accuracy"] == pytest.approx(3 / 11)
    assert scores["exact_scene_accuracy"] == pytest.approx(2 / 9)
    assert scores["object_accuracy"] == pytest.approx(16 / 20)


def test_a_right_relation_to_a_misnamed_anchor_is_not_true_of_another_object():
    """Red is left of blue, but "a large green square" is no object: the pair is unchecked."""
    breakdown = relation_breakdown(
        ["a small red circle left of a large green square and a small green triangle below "
         "the small red circle"], [THREE])
    assert breakdown["by_objects"]["3"]["relations_correct"] == 1
    assert {kind: row["all"] for kind, row in breakdown["errors"].items()} == {
        "object_misnamed": 1, "wrong_axis": 0, "wrong_direction": 0, "missing": 0,
        "true_of_another_object": 0}


def test_relation_breakdown_of_nothing_and_mismatched_lengths():
    assert relation_breakdown([], []) == {
        "by_objects": {},
        "errors": {kind: {"all": 0} for kind in ("object_misnamed", "wrong_axis",
                                                  "wrong_direction", "missing",
                                                  "true_of_another_object")}}
    with pytest.raises(ValueError, match="len\\(captions\\)=2, len\\(scenes\\)=1"):
        relation_breakdown(["a", "b"], [TWO])
