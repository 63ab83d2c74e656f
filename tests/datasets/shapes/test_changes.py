import collections
import itertools

import numpy as np
import pytest

from tests.datasets.shapes.scene_references import dominant
from tests.datasets.shapes.scene_references import triple
from vlm.datasets.shapes import builders
from vlm.datasets.shapes import changes
from vlm.datasets.shapes import scene
from vlm.datasets.shapes import vocabulary
from vlm.metrics.change import parse_change_caption


def sample_changes(count, image_size, seed=7):
    rng = np.random.default_rng(seed)
    return [changes.generate_change(rng, image_size) for _ in range(count)]


def test_same_seed_same_bytes_different_seed_different_images():
    first = list(changes.generate_change_examples(6, seed=3, image_size=32))
    again = list(changes.generate_change_examples(6, seed=3, image_size=32))
    other = list(changes.generate_change_examples(6, seed=4, image_size=32))
    for a, b, c in zip(first, again, other):
        assert a["images"].shape == (2, 32, 32, 3) and a["images"].dtype == np.uint8
        assert a["images"].tobytes() == b["images"].tobytes()
        for key in ("captions", "change", "change_type", "before", "after"):
            assert a[key] == b[key], key
        assert a["images"].tobytes() != c["images"].tobytes()
    # An example depends on (seed, index) only, not on how many came before.
    alone = list(changes.generate_change_examples(3, seed=3, image_size=32))[-1]
    assert alone["images"].tobytes() == first[2]["images"].tobytes()
    assert alone["change"] == first[2]["change"]


@pytest.mark.parametrize("image_size", [32, 64])
def test_stored_change_is_true_of_the_scenes(image_size):
    reach = max(1, round(changes.JITTER * image_size))
    seen = collections.Counter()
    relations_seen, nudged, unchanged_total = set(), 0, 0
    for before, after, change in sample_changes(250, image_size):
        kind = change["type"]
        seen[kind] += 1
        old, new = before["objects"], after["objects"]
        old_by_triple = {triple(o): o for o in old}
        new_by_triple = {triple(o): o for o in new}
        assert len(old_by_triple) == len(old) and len(new_by_triple) == len(new)
        assert 1 <= len(new) <= 3
        assert change["relation"] is None or kind == "moved"
        assert change["anchor"] is None or kind == "moved"
        assert change["new_color"] is None or kind == "color"
        # Pairs of (before, after) objects that are the same object.
        same = {t: t for t in old_by_triple if t in new_by_triple}
        if kind == "none":
            assert change["object"] is None and set(new_by_triple) == set(old_by_triple)
        elif kind == "moved":
            assert set(new_by_triple) == set(old_by_triple)
            mover, anchor = change["object"], change["anchor"]
            assert mover != anchor
            before_relation = dominant(old_by_triple[mover], old_by_triple[anchor])
            after_relation = dominant(new_by_triple[mover], new_by_triple[anchor])
            assert before_relation != after_relation == change["relation"]
            relations_seen.add(after_relation)
            del same[mover]
        elif kind == "appeared":
            assert len(new) == len(old) + 1 <= 3
            assert set(new_by_triple) - set(old_by_triple) == {change["object"]}
        elif kind == "disappeared":
            assert len(new) == len(old) - 1 >= 1
            assert set(old_by_triple) - set(new_by_triple) == {change["object"]}
        else:
            size, color, shape = change["object"]
            assert change["new_color"] != color and change["new_color"] in vocabulary.COLORS
            assert set(old_by_triple) - set(new_by_triple) == {change["object"]}
            assert set(new_by_triple) - set(old_by_triple) == {(size, change["new_color"], shape)}
            recolored = new_by_triple[(size, change["new_color"], shape)]
            # Only the colour changed: the object stays where it was.
            assert (recolored["x"], recolored["y"]) == (old_by_triple[change["object"]]["x"],
                                                        old_by_triple[change["object"]]["y"])
        # Unchanged objects: nudged at most `reach` whole pixels, every relation kept.
        for t in same:
            a, b = old_by_triple[t], new_by_triple[t]
            assert abs(a["x"] - b["x"]) <= reach and abs(a["y"] - b["y"]) <= reach
            assert float(b["x"]).is_integer() and float(b["y"]).is_integer()
            unchanged_total += 1
            nudged += (a["x"], a["y"]) != (b["x"], b["y"])
        for s, t in itertools.combinations(same, 2):
            assert dominant(old_by_triple[s], old_by_triple[t]) == dominant(
                new_by_triple[s], new_by_triple[t])
        # The after scene keeps the shapes layout rules.
        for i, obj in enumerate(new):
            margin = scene.margin(obj["size"], image_size)
            assert margin <= obj["x"] < image_size - margin
            assert margin <= obj["y"] < image_size - margin
            assert scene.placement_ok(obj, new[:i] + new[i + 1:], image_size)
    assert set(seen) == set(vocabulary.CHANGE_TYPES), seen
    assert relations_seen == set(vocabulary.RELATIONS)
    # Most unchanged objects are nudged (some stay where the rules leave no room).
    assert nudged / unchanged_total > 0.5, (nudged, unchanged_total)


def test_change_types_are_uniform_among_the_possible_ones():
    # 1 object: none, appeared, color; 2: all five; 3: none, moved, disappeared, color.
    by_count = collections.defaultdict(collections.Counter)
    for before, _, change in sample_changes(450, 32, seed=11):
        by_count[len(before["objects"])][change["type"]] += 1
    expected = {1: {"none", "appeared", "color"}, 2: set(vocabulary.CHANGE_TYPES),
                3: {"none", "moved", "disappeared", "color"}}
    for count, kinds in expected.items():
        counter = by_count[count]
        assert set(counter) == kinds
        share = np.array(list(counter.values())) / sum(counter.values())
        assert np.abs(share - 1 / len(kinds)).max() < 0.12, (count, counter)


@pytest.mark.parametrize("image_size", [32, 64])
def test_every_reference_caption_parses_back_to_the_change(image_size):
    words = {word for phrase in (
        *vocabulary.COLORS, *vocabulary.SHAPES, *vocabulary.SIZES,
        *itertools.chain(*vocabulary.RELATION_PHRASES.values()),
        *vocabulary.NO_CHANGE_CAPTIONS, *itertools.chain(*vocabulary.CHANGE_VERBS.values()),
        *vocabulary.APPEARED_ARTICLES, "the") for word in phrase.split()}
    rng = np.random.default_rng(2)
    for _, _, change in sample_changes(250, image_size, seed=2):
        canonical = changes.canonical_change(change)
        assert canonical.split("|")[0] == change["type"]
        # Asking for more than there are gives every wording: at least 3, all distinct.
        captions = changes.change_captions(change, rng, 10)
        assert 3 <= len(captions) == len(set(captions)) <= 6
        for caption in captions:
            assert caption == caption.lower() and set(caption.split()) <= words, caption
            assert parse_change_caption(caption) == canonical, caption
    caption_counts = collections.Counter(
        len(example["captions"])
        for example in changes.generate_change_examples(30, seed=2, image_size=16))
    assert set(caption_counts) == {3, 4, 5}


def test_canonical_change_format():
    moved = {"type": "moved", "object": ("small", "red", "circle"), "relation": "left of",
             "anchor": ("large", "blue", "square"), "new_color": None}
    assert (changes.canonical_change(moved)
            == "moved|small red circle|left of|large blue square")
    color = {"type": "color", "object": ("small", "red", "circle"), "relation": None,
             "anchor": None, "new_color": "blue"}
    assert changes.canonical_change(color) == "color|small red circle|blue"
    assert changes.canonical_change(
        {"type": "appeared", "object": ("large", "green", "triangle")}
    ) == "appeared|large green triangle"
    assert changes.canonical_change({"type": "none", "object": None}) == "none"
    with pytest.raises(ValueError, match="type='grew'"):
        changes.canonical_change({"type": "grew"})
    rng = np.random.default_rng(0)
    all_moved = {
        "the small red circle moved left of the large blue square",
        "the small red circle moved to the left of the large blue square",
        "the small red circle was moved left of the large blue square",
        "the small red circle was moved to the left of the large blue square",
        "the small red circle is now left of the large blue square",
        "the small red circle is now to the left of the large blue square",
    }
    captions = changes.change_captions(moved, rng, 5)
    assert len(set(captions)) == 5 and set(captions) <= all_moved
    assert set(changes.change_captions(moved, rng, 9)) == all_moved
    assert sorted(changes.change_captions(color, rng, 5)) == [
        "the small red circle became blue", "the small red circle changed to blue",
        "the small red circle turned blue"]


def test_after_image_is_a_new_rendering():
    differences = collections.defaultdict(list)
    for example in changes.generate_change_examples(120, seed=5, image_size=32):
        before, after = example["images"].astype(np.float32)
        differences[example["change_type"]].append(np.abs(before - after).mean())
    none = np.array(differences.pop("none"))
    changed = np.concatenate([np.array(values) for values in differences.values()])
    # Noise alone (sigma 5 per image) gives |N(0, 7.1)| = 5.6 on average; the new
    # background, tint and jitter add far more, even when nothing changed.
    assert len(none) >= 15
    assert none.min() > 8.0 and none.mean() > 15.0, none
    # The change itself hardly moves the mean difference: it does not give the type away.
    assert abs(np.median(none) - np.median(changed)) < 5.0, (np.median(none), np.median(changed))


def test_load_shapes_change_prepares_offline(tmp_path, capsys):
    sizes = {"train": 8, "validation": 4, "test": 4}
    kwargs = dict(image_size=32, train_size=8, validation_size=4, test_size=4, seed=1,
                  data_dir=tmp_path)
    first_images = {}
    for split, size in sizes.items():
        examples = list(builders.load_shapes_change(split, **kwargs).as_numpy_iterator())
        assert len(examples) == size
        examples.sort(key=lambda example: example["image_id"])  # TFDS stores them shuffled
        expected = changes.generate_change_examples(
            size, builders.split_seed(1, split), image_size=32)
        for example, reference in zip(examples, expected):
            assert example["images"].shape == (2, 32, 32, 3)
            assert example["images"].dtype == np.uint8
            assert example["image_id"] == reference["image_id"]
            # PNG is lossless: the stored images are the generated ones.
            np.testing.assert_array_equal(example["images"], reference["images"])
            assert [c.decode() for c in example["captions"]] == reference["captions"]
            assert example["change"].decode() == reference["change"]
            assert (vocabulary.CHANGE_TYPES[example["change_type"]]
                    == reference["change_type"])
            for key in ("before", "after"):
                assert (scene.scene_from_features(example[key])
                        == scene.scene_from_features(reference[key]))
        first_images[split] = examples[0]["images"]
    out = capsys.readouterr().out
    assert out.count("Preparing shapes change dataset (32px)") >= 1 and "16/16" in out
    assert "dataset_info.json" not in out and "Generating" not in out
    assert (tmp_path / "shapes_change" / "s32_tr8_va4_te4_seed1").is_dir()
    assert not np.array_equal(first_images["train"], first_images["validation"])
    # A second load reuses the prepared files.
    assert len(list(builders.load_shapes_change("test", **kwargs))) == 4
    assert "Preparing" not in capsys.readouterr().out
