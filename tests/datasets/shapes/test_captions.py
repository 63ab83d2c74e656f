import itertools

import numpy as np
import pytest

from vlm.datasets.shapes import builders
from vlm.datasets.shapes import captions
from vlm.datasets.shapes import scene
from vlm.datasets.shapes import vocabulary
from vlm.metrics.grounded import parse_caption
from vlm.metrics.grounded import relation_holds
from vlm.metrics.grounded import score_caption


def bounding_gap(a, b, image_size):
    """Free space between two objects' bounding boxes along their better-separated axis."""
    reach = (scene.SIZE_RADIUS[a["size"]] + scene.SIZE_RADIUS[b["size"]]) * image_size
    return max(abs(a["x"] - b["x"]), abs(a["y"] - b["y"])) - reach


def scenes_with_captions(count, image_size):
    """`count` random scenes with their reference captions."""
    rng = np.random.default_rng(123)
    for _ in range(count):
        graph = scene.generate_scene(rng, image_size)
        yield graph, captions.scene_captions(graph, rng, int(rng.integers(3, 6)))


def test_same_seed_same_bytes_different_seed_different_images():
    first = list(captions.generate_examples(6, seed=3, image_size=32))
    again = list(captions.generate_examples(6, seed=3, image_size=32))
    other = list(captions.generate_examples(6, seed=4, image_size=32))
    for a, b, c in zip(first, again, other):
        assert a["image"].tobytes() == b["image"].tobytes()
        assert a["captions"] == b["captions"] and a["objects"] == b["objects"]
        assert a["image"].tobytes() != c["image"].tobytes()
    # An example depends on (seed, index) only, not on how many came before.
    alone = list(captions.generate_examples(3, seed=3, image_size=32))[-1]
    assert alone["image"].tobytes() == first[2]["image"].tobytes()


@pytest.mark.parametrize("image_size", [32, 64])
def test_scene_layout(image_size):
    for graph, _ in scenes_with_captions(150, image_size):
        objects = graph["objects"]
        assert 1 <= len(objects) <= 3
        assert len({(o["size"], o["color"], o["shape"]) for o in objects}) == len(objects)
        for o in objects:
            r = scene.SIZE_RADIUS[o["size"]] * image_size
            assert r <= o["x"] <= image_size - 1 - r and r <= o["y"] <= image_size - 1 - r
        for a, b in itertools.combinations(objects, 2):
            dx, dy = abs(a["x"] - b["x"]), abs(a["y"] - b["y"])
            assert bounding_gap(a, b, image_size) >= scene.GAP * image_size  # no overlap
            assert max(dx, dy) >= 0.15 * image_size
            assert abs(dx - dy) >= scene.AXIS_LEAD * image_size  # a clear dominant axis


@pytest.mark.parametrize("image_size", [32, 64])
def test_every_reference_caption_parses_back_to_its_scene(image_size):
    num_objects_seen = set()
    for graph, references in scenes_with_captions(150, image_size):
        objects = graph["objects"]
        num_objects_seen.add(len(objects))
        expected = {(o["size"], o["color"], o["shape"]): o for o in objects}
        assert len(set(references)) == len(references)
        assert 3 <= len(references) <= 5
        for caption in references:
            assert caption == caption.lower() and caption.replace(" ", "").isalpha()
            mentions, relations = parse_caption(caption)
            assert sorted(mentions) == sorted(expected), caption
            assert len(relations) == len(objects) - 1, caption
            mentioned = {m for i, _, j in relations for m in (i, j)}
            assert len(mentioned) == len(objects) or len(objects) == 1, caption
            for i, relation, j in relations:
                a, b = expected[mentions[i]], expected[mentions[j]]
                assert relation_holds(a, relation, b), caption
                # Along the dominant axis.
                horizontal = abs(a["x"] - b["x"]) > abs(a["y"] - b["y"])
                assert horizontal == (relation in ("left of", "right of")), caption
            assert score_caption(caption, objects)["exact_scene"] == 1, caption
    assert num_objects_seen == {1, 2, 3}


def test_caption_counts_per_example():
    for example in captions.generate_examples(40, seed=0, image_size=32):
        assert 3 <= len(example["captions"]) <= 5
        assert len(set(example["captions"])) == len(example["captions"])


def test_rendered_colours_at_object_centres():
    palette = np.array(list(vocabulary.COLORS.values()), np.float32)
    for example in captions.generate_examples(60, seed=5, image_size=32):
        image = example["image"]
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        graph = scene.scene_from_features(example["objects"])
        for obj in graph["objects"]:
            x, y = int(obj["x"]), int(obj["y"])
            # Mean over the 3x3 centre patch (inside every shape) averages the noise out.
            patch = image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).astype(np.float32).mean(0)
            assert np.abs(patch - vocabulary.COLORS[obj["color"]]).max() <= 20
            nearest = list(vocabulary.COLORS)[np.argmin(((palette - patch) ** 2).sum(-1))]
            assert nearest == obj["color"]


def test_scene_from_features_reads_class_indices():
    features = {"shape": np.array([2, 0]), "color": np.array([1, 6]), "size": np.array([0, 1]),
                "x": np.array([3.0, 20.0], np.float32), "y": np.array([4.0, 5.0], np.float32)}
    assert scene.scene_from_features(features) == {"objects": [
        {"shape": "triangle", "color": "green", "size": "small", "x": 3.0, "y": 4.0},
        {"shape": "circle", "color": "orange", "size": "large", "x": 20.0, "y": 5.0},
    ]}


def test_load_shapes_prepares_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLM_CACHE_DIR", str(tmp_path))  # the default data_dir goes under it
    sizes = {"train": 12, "validation": 4, "test": 3}
    kwargs = dict(image_size=32, train_size=12, validation_size=4, test_size=3, seed=1)
    first_images = {}
    for split, size in sizes.items():
        examples = list(builders.load_shapes(split, **kwargs).as_numpy_iterator())
        assert len(examples) == size
        examples.sort(key=lambda example: example["image_id"])  # TFDS stores them shuffled
        expected = captions.generate_examples(size, builders.split_seed(1, split), image_size=32)
        for example, reference in zip(examples, expected):
            assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
            assert example["image_id"].dtype == np.int64
            assert example["image_id"] == reference["image_id"]
            # PNG is lossless: the stored image is the generated one.
            np.testing.assert_array_equal(example["image"], reference["image"])
            assert [c.decode() for c in example["captions"]] == reference["captions"]
            objects = example["objects"]
            assert objects["shape"].dtype == np.int64 and objects["x"].dtype == np.float32
            assert (scene.scene_from_features(objects)
                    == scene.scene_from_features(reference["objects"]))
        first_images[split] = examples[0]["image"]
    out = capsys.readouterr().out
    # One progress line (no TFDS notices), counting the 12 + 4 + 3 images.
    assert out.count("Preparing shapes dataset (32px)") >= 1 and "19/19" in out
    assert "dataset_info.json" not in out and "Generating" not in out
    variant = tmp_path / "tensorflow_datasets" / "shapes_captions" / "s32_tr12_va4_te3_seed1"
    assert variant.is_dir()
    # Splits are different streams.
    assert not np.array_equal(first_images["train"], first_images["validation"])
    # A second load reuses the prepared files.
    assert len(list(builders.load_shapes("test", **kwargs))) == 3
    assert "Preparing" not in capsys.readouterr().out
