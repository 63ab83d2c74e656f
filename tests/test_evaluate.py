import json
import math
import os
import subprocess
import sys

import keras
import pytest

import evaluate
from tests.generation.test_generator import MODEL
from vlm import load_captioner
from vlm.config import DataConfig
from vlm.evaluation import evaluate_model
from vlm.evaluation import markdown_report
from vlm.evaluation import output_paths
from vlm.evaluation import score
from vlm.evaluation import write_outputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_KEYS = {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"}
GROUNDED_KEYS = {"object_accuracy", "color_accuracy", "shape_accuracy", "size_accuracy",
                 "relation_accuracy", "exact_scene_accuracy", "hallucination_rate"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def prediction_files(tmp_path):
    references = [
        {"image_id": 1, "captions": ["a small red circle left of a large blue square",
                                     "a large blue square right of a small red circle"]},
        {"image_id": 2, "captions": ["a large green triangle", "there is a large green triangle"]},
    ]
    predictions = [
        {"image_id": 1, "caption": "a small red circle left of a large blue square"},
        {"image_id": 2, "caption": "a small yellow circle"},
    ]
    return (write_jsonl(tmp_path / "preds.jsonl", predictions),
            write_jsonl(tmp_path / "refs.jsonl", references))


def test_scores_predictions_files(prediction_files, tmp_path, capsys):
    preds, refs = prediction_files
    out = str(tmp_path / "scores.json")
    assert evaluate.main(["--predictions", preds, "--references", refs, "--output", out]) == 0
    metrics = json.load(open(out))
    assert COCO_KEYS <= set(metrics) and metrics["num_images"] == 2
    rows = [json.loads(line) for line in open(output_paths(out)["predictions"])]
    assert rows[0]["bleu_4"] == pytest.approx(1.0) and rows[0]["rouge_l"] == pytest.approx(1.0)
    assert rows[1]["cider_d"] < rows[0]["cider_d"]
    assert rows[1]["rouge_l"] < 0.5
    assert "| bleu_4 |" in open(output_paths(out)["report"]).read()
    assert "bleu_4" in capsys.readouterr().out


def test_predictions_mode_needs_no_backend(prediction_files, tmp_path):
    preds, refs = prediction_files
    code = (
        "import sys; sys.path.insert(0, %r); import evaluate; "
        "code = evaluate.main(['--predictions', %r, '--references', %r, '--output', %r]); "
        "heavy = [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(code)"
    ) % (REPO, preds, refs, str(tmp_path / "s.json"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


@pytest.mark.parametrize("content, message", [
    ('{"image_id": 1, "caption": "a"}\nnot json\n', "preds.jsonl, line 2: bad JSON"),
    ('{"image_id": 1}\n', "preds.jsonl, line 1: expected keys 'image_id' and 'caption'"),
    ('{"image_id": 1, "caption": 5}\n', "preds.jsonl, line 1: 'caption' must be a string"),
    ('{"image_id": 9, "caption": "a"}\n',
     "no references for 1 predicted image(s), e.g. image_id '9'"),
])
def test_bad_prediction_files_name_the_line(prediction_files, tmp_path, capsys, content, message):
    _, refs = prediction_files
    bad = tmp_path / "preds.jsonl"
    bad.write_text(content)
    code = evaluate.main(["--predictions", str(bad), "--references", refs,
                          "--output", str(tmp_path / "x.json")])
    assert code == 2
    assert message in capsys.readouterr().err


def scene_object(size, color, shape, x, y):
    return {"size": size, "color": color, "shape": shape, "x": float(x), "y": float(y)}


def test_error_breakdowns_go_to_the_json_and_the_report_tables(tmp_path):
    """score() on two shapes scenes and one change: breakdowns nested, rendered as tables."""
    red, blue = (scene_object("small", "red", "circle", 10, 20),
                 scene_object("large", "blue", "square", 50, 22))
    scenes = [{"objects": [red]}, {"objects": [red, blue]}]
    captions = ["a small red circle", "a small red circle above a large blue square"]
    metrics, per_image = score([1, 2], captions, [[c] for c in captions], scenes=scenes)
    assert metrics["relation_errors"]["errors"]["wrong_axis"] == {"1": 0, "2": 1, "all": 1}
    paths = output_paths(str(tmp_path / "results.json"))
    write_outputs(paths, metrics, per_image, "shapes")
    assert json.load(open(paths["metrics"]))["relation_errors"] == metrics["relation_errors"]
    report = open(paths["report"]).read()
    assert ("| objects | scenes | relations_total | relations_correct | relation_accuracy |"
            in report)
    assert "| 2 | 1 | 1 | 0 | 0.0000 | 0.0000 | 1.0000 |" in report
    assert "| error | 1 | 2 | all |" in report and "| wrong_axis | 0 | 1 | 1 |" in report
    assert "relation_errors" not in report.split("## Relations")[0]  # not in the metrics table

    before = {"objects": [red, blue]}
    after = {"objects": [dict(red, x=80.0), blue]}
    swapped = "the large blue square moved left of the small red circle"
    metrics, per_image = score([3], [swapped], [["a"]], changes=[
        {"change": "moved|small red circle|right of|large blue square",
         "scenes": (before, after)}])
    assert metrics["moved_errors"]["mover_anchor_swapped"] == 1
    report = markdown_report(metrics, per_image, "change")
    assert "| outcome | examples | share |" in report
    assert "| mover_anchor_swapped | 1 | 1.0000 |" in report


def test_shuffled_image_control_scores_each_scene_on_the_previous_images_caption():
    """A captioner reads only its image: with images shuffled, scene i gets caption i-1."""
    red = scene_object("small", "red", "circle", 10, 20)
    blue = scene_object("large", "blue", "square", 50, 22)
    green = scene_object("large", "green", "triangle", 30, 40)
    scenes = [{"objects": [red]}, {"objects": [red, blue]}, {"objects": [green]}]
    captions = ["a small red circle", "a small red circle left of a large blue square",
                "a large green triangle"]
    metrics, _ = score([1, 2, 3], captions, [[c] for c in captions], scenes=scenes)
    assert metrics["object_accuracy"] == 1.0
    # Scene 1 gets the triangle (0 of 1), scene 2 the red circle alone (1 of 2), scene 3
    # the circle and square (0 of 1): 1 of 4 objects.
    assert metrics["object_accuracy_shuffled_images"] == 0.25
    assert "object_accuracy_shuffled_images" not in score([1], captions[:1], [["a"]],
                                                          scenes=scenes[:1])[0]


def test_report_of_answer_rows_has_no_cider_section():
    rows = [{"image_id": 1, "question": "what colour is the circle", "type": "colour",
             "answer": "red", "prediction": "red"}]
    report = markdown_report({"answer_accuracy": 1.0}, rows, "qa")
    assert "| answer_accuracy | 1.0000 |" in report and "CIDEr-D" not in report


def test_model_files_that_are_not_keras_archives_are_refused(tmp_path, capsys):
    saved_model = tmp_path / "serving"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"")
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    for path, message in [(saved_model, "is a TensorFlow SavedModel folder, not a .keras file"),
                          (h5, "only .keras files are loaded, not .h5")]:
        assert evaluate.main(["--model", str(path), "--output", str(tmp_path / "x.json")]) == 2
        err = capsys.readouterr().err
        assert f"evaluate.py: error: {path}" in err and message in err


@pytest.mark.slow
def test_evaluating_a_folder_skips_bad_images_and_names_them(tmp_path, capfd):
    """evaluate.py's captioning loop over a captions folder with broken images in it."""
    import numpy as np
    import PIL.Image

    from tests.data.image_files import png_bomb
    from tests.data.image_files import truncated_jpeg
    from tests.generation.test_generator import golden_images
    from vlm.data.folder import SkippedInputWarning
    from vlm.data.images import decode_image
    from vlm.datasets import load_examples
    from vlm.evaluation import caption_split

    images = golden_images(3)
    rows = ["image,caption"]
    for i, (name, fmt) in enumerate([("a.png", "PNG"), ("b.jpg", "JPEG"), ("c.png", "PNG")]):
        PIL.Image.fromarray(images[i] if i < 2 else images[i].mean(-1).astype("uint8")).save(
            tmp_path / name, format=fmt)
        rows.append(f"{name},a small red circle")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes(truncated_jpeg(images[0]))
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    rows[2:2] = ["empty.png,a cat", "cut.jpg,a dog", "bomb.png,a bird"]
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    data = DataConfig(dataset="folder", captions_file=str(tmp_path / "captions.csv"))
    with pytest.warns(SkippedInputWarning) as record:
        examples = load_examples(data, "train", 64)
    csv = data.captions_file
    assert [str(w.message) for w in record] == [
        f"{csv}, line 3: skipping image 'empty.png': empty file (0 bytes)",
        f"{csv}, line 5: skipping image 'bomb.png': the image is 10000x6000 (60.0 megapixels), "
        "over the limit of 50 megapixels (MAX_IMAGE_PIXELS): refused before decoding as a "
        "possible decompression bomb",
    ]
    model = load_captioner(MODEL)
    ids, captions, references, _, _, _ = caption_split(model, examples, batch_size=3)
    err = capfd.readouterr().err
    assert ids == ["a.png", "b.jpg", "c.png"]
    assert references == [["a small red circle"]] * 3
    decoded = np.stack([decode_image((tmp_path / i).read_bytes()).numpy() for i in ids])
    assert captions == model.generate(decoded)
    assert "skipping image 'cut.jpg': it could not be read or decoded" in err
    assert "skipped 3 of 6 images this pass (2 refused when listed, 1 undecodable)" in err


@pytest.mark.slow
def test_evaluates_the_shipped_model_on_a_shapes_split(tmp_path):
    model = load_captioner(MODEL)
    # One batch: each new batch size would compile the decoding loop again.
    data = DataConfig(dataset="shapes", train_size=8, validation_size=8, test_size=16)
    metrics, per_image, entries = evaluate_model(model, data, "test", batch_size=16,
                                                 gallery_size=4)
    assert metrics["num_images"] == len(per_image) == 16
    assert COCO_KEYS | GROUNDED_KEYS <= set(metrics)
    # A trained model on its own task: grounded and n-gram scores are high.
    assert metrics["object_accuracy"] > 0.8 and metrics["bleu_1"] > 0.6
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert 1.0 < metrics["perplexity"] < 5.0
    assert len(entries) == 6 and sum("label" in e for e in entries) == 2
    paths = output_paths(str(tmp_path / "results.json"))
    write_outputs(paths, metrics, per_image, "test", entries)
    for path in paths.values():
        assert os.path.getsize(path) > 100
    assert os.path.getsize(paths["gallery"]) > 20_000


@pytest.mark.slow
@pytest.mark.skipif(keras.config.backend() != "tensorflow",
                    reason="change scoring is the same on every backend; decoding pairs is "
                           "tested on each in tests/models/test_multi_image_captioner.py")
def test_scores_the_shipped_change_model_on_its_own_task(tmp_path):
    """The shipped change captioner on 32 test pairs (the first of its test stream)."""
    model = load_captioner(os.path.join(os.path.dirname(MODEL), "shapes_change.keras"))
    data = DataConfig(dataset="shapes_change", train_size=8, validation_size=8, test_size=32)
    metrics, per_image, entries = evaluate_model(model, data, "test", batch_size=32,
                                                 gallery_size=2)
    assert metrics["dataset"] == "shapes_change" and metrics["num_images"] == 32
    assert COCO_KEYS <= set(metrics)
    assert metrics["exact_change_accuracy"] >= 0.85  # the whole split: the shipped report
    assert metrics["change_type_accuracy"] >= metrics["change_object_accuracy"] >= (
        metrics["exact_change_accuracy"])
    assert entries[0]["image"].shape == (64, 128, 3)  # the pair, side by side


@pytest.mark.slow
@pytest.mark.skipif(keras.config.backend() != "torch",
                    reason="evaluate.py's scene rendering is the same on every backend, and "
                           "decoding the shipped model is tested on each above")
def test_scores_scenes_rendered_from_a_seed_no_split_uses(tmp_path, capsys):
    import numpy as np

    from vlm.datasets.shapes.builders import split_seed
    from vlm.datasets.shapes.captions import generate_examples

    out = tmp_path / "fresh.json"
    assert evaluate.main(["--model", MODEL, "--scenes-seed", "7", "--max-images", "16",
                          "--batch-size", "16", "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["scenes_seed"] == 7 and metrics["num_images"] == 16
    assert metrics["object_accuracy"] > 0.8
    # Not the test split's scenes: another example stream.
    first = [next(generate_examples(1, split_seed(seed, "test")))["image"] for seed in (7, 0)]
    assert not np.array_equal(*first)
    capsys.readouterr()
    assert evaluate.main(["--model", MODEL, "--scenes-seed", "7", "--dataset", "coco",
                          "--output", str(out)]) == 2
    assert capsys.readouterr().err == (
        "evaluate.py: error: --scenes-seed renders shapes scenes; it applies to --dataset "
        "shapes, shapes_change, shapes_qa. Received: --dataset coco\n")
    # Change pairs too: the change model's own scores on pairs of that seed.
    change_model = os.path.join(os.path.dirname(MODEL), "shapes_change.keras")
    assert evaluate.main(["--model", change_model, "--scenes-seed", "7", "--max-images", "16",
                          "--batch-size", "16", "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["dataset"] == "shapes_change" and metrics["num_images"] == 16
    assert metrics["scenes_seed"] == 7 and metrics["change_type_accuracy"] >= 0.75


def test_greedy_answer_hits_are_what_greedy_decoding_writes():
    """Teacher-forced exact match: right iff every answer token and [END] is the argmax."""
    import numpy as np

    from tests.data.caption_examples import VOCABULARY
    from vlm.data.tokenizer import CaptionTokenizer
    from vlm.evaluation import greedy_answer_hits

    tokenizer = CaptionTokenizer(vocabulary=VOCABULARY)
    ids = {w: tokenizer.token_to_id(w) for w in ("a", "dog", "cat", "grass", "on")}
    start, end, size = 2, 3, tokenizer.vocabulary_size()
    # A bigram model: greedy after [START] writes "grass", then [END]; after "dog", "on".
    following = np.full(size, ids["cat"])
    following[[start, ids["grass"], ids["dog"]]] = [ids["grass"], end, ids["on"]]
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    table = keras.layers.Embedding(size, size, weights=[np.eye(size)[following] * 5.0])
    text_model = keras.Model({"tokens": tokens}, table(tokens))
    hits = greedy_answer_hits(
        text_model, tokenizer, ["a dog", "a dog", "a dog", "", "a cat on"],
        ["grass", "cat", "grass grass", "grass", "grass"], sequence_length=8, batch_size=2)
    np.testing.assert_array_equal(hits, [True, False, False, True, True])
