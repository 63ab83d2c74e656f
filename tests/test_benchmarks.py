"""The benchmark's yardsticks: its FLOP count and its keras-hub baseline are right.

Nothing here is timed; `python -m benchmarks` does the timing.
"""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from benchmarks.baseline import build_baseline
from benchmarks.baseline import compile_baseline
from benchmarks.baseline import make_greedy_generate
from benchmarks.report import RESULTS_DIR
from benchmarks.report import RESULTS_MD
from benchmarks.report import markdown
from benchmarks.report import report
from benchmarks.run import ref_config
from benchmarks.run import training_flops_per_example
from benchmarks.time_to_quality import first_epoch_meeting
from benchmarks.time_to_quality import time_to_quality
from vlm.config import parse_targets

SMALL = dict(image_size=16, patch_size=4, encoder_layers=2, encoder_heads=2,
             encoder_dim=32, encoder_mlp_dim=64, decoder_layers=2, decoder_heads=2,
             decoder_dim=32, decoder_mlp_dim=64, sequence_length=9, vocabulary_size=50)


def test_reference_size_is_the_issues_figure():
    # The benchmark issue: about 2.07 GFLOP per training example at "ref".
    flops = training_flops_per_example(ref_config(), 1000)
    assert abs(flops / 1e9 - 2.07) < 0.01, flops
    # 4 captions per image: the encoder (1.28 GFLOP of the 2.07) and the
    # cross attention's keys and values (0.20) run once per 4 examples.
    shared = training_flops_per_example(ref_config(), 1000, captions_per_image=4)
    assert abs(shared / 1e9 - (2.07 - 0.75 * (1.277 + 0.201))) < 0.01, shared


@pytest.mark.skipif(keras.config.backend() != "jax",
                    reason="XLA's own FLOP count through jax.jit; runs in the JAX suite")
def test_flop_count_matches_xla_cost_analysis():
    import jax

    from vlm.models.captioner import build_captioner

    c = ref_config()
    model = build_captioner(c, c.vocabulary_size)
    values = [v.value for v in model.variables]

    def forward(values, images, tokens):
        with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
            return model({"images": images, "tokens": tokens})

    # 2 images with 1 caption each, and 2 images with 4 captions each.
    for k in (1, 4):
        images = np.zeros((2, 64, 64, 3), "float32")
        tokens = np.zeros((2 * k, c.sequence_length), "int32")
        cost = jax.jit(forward).lower(values, images, tokens).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        xla_forward_per_example = cost["flops"] / 2 / k
        # forward = 1/3 of training
        ours = training_flops_per_example(c, c.vocabulary_size, k) / 3
        # XLA also counts the elementwise work (softmax, norms, GELU, adds),
        # which the matmul count leaves out: 3.9% at the reference size.
        assert 1.0 <= xla_forward_per_example / ours < 1.06, (k, xla_forward_per_example, ours)


@pytest.fixture(scope="module")
def baseline():
    keras.utils.set_random_seed(1)
    config = dataclasses.replace(ref_config(), **SMALL)
    return config, build_baseline(config, config.vocabulary_size)


def test_baseline_cached_greedy_equals_full_forward_argmax(baseline):
    """keras-hub's caches in our baseline loop decode what the full model predicts."""
    config, model = baseline
    new_tokens = config.sequence_length - 1
    images = np.random.default_rng(0).random((3, 16, 16, 3)).astype("float32") * 255
    cached = keras.ops.convert_to_numpy(make_greedy_generate(model, new_tokens)(images))
    assert cached.shape == (3, new_tokens + 1)
    tokens = np.zeros((3, config.sequence_length), "int32")
    tokens[:, 0] = 2
    for t in range(new_tokens):  # naive: the whole model, every step
        logits = keras.ops.convert_to_numpy(model({"images": images, "tokens": tokens}))
        tokens[:, t + 1] = logits[:, t].argmax(-1)
    np.testing.assert_array_equal(cached, tokens[:, : new_tokens + 1])
    assert len(np.unique(cached[:, 1:])) > 1  # not a constant sequence


def test_baseline_trains(baseline):
    config, model = baseline
    # XLA on JAX only: TensorFlow's graphs skip XLA's compile, which is most of this test.
    compile_baseline(model, learning_rate=3e-3, jit_compile=keras.config.backend() == "jax")
    rng = np.random.default_rng(0)
    x = {"images": rng.random((8, 16, 16, 3)).astype("float32") * 255,
         "tokens": rng.integers(4, 50, (8, config.sequence_length)).astype("int32")}
    y = np.roll(x["tokens"], -1, axis=1)
    losses = [float(model.train_on_batch(x, y)) for _ in range(15)]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses


def test_markdown_table_has_every_row():
    entry = {"examples_per_s": 10.0, "gflops": 20.7, "fraction_of_peak": 0.05}
    generation = {"ours_cached_ms": 5.0, "baseline_cached_ms": 10.0, "vs_baseline": 2.0,
                  "ours_naive_ms": 50.0, "vs_naive": 10.0}
    results = {
        "command": "python -m benchmarks", "machine": {"cpu": "cpu", "cores": 2},
        "backends": [{
            "backend": "jax", "matmul_peak_gflops": 400.0,
            "training": {"jit:float32": {"ours": entry, "baseline": entry, "speedup": 1.0,
                                         "ours_4_per_image": dict(entry, examples_per_s=17.0),
                                         "speedup_4_per_image": 1.7}},
            "generation": {"batch_1": generation, "batch_32": generation},
            "memory": {"train_peak_rss_mb": 1.0, "generate_peak_rss_mb": 2.0},
        }],
        "serving": {"batch_1_ms_per_image": 11.0, "batch_32_ms_per_image": 2.7},
    }
    table = markdown(results)
    assert "| jax | on | float32 | 10.0 | 10.0 | 1.0x | 17.0 | 1.7x | 20.7 (5%)" in table
    assert "| jax | 32 | 5.0 | 10.0 | 2.0x | 50.0 | 10.0x |" in table
    assert "11.0 ms/image at batch 1" in table


def test_results_md_is_generated_from_the_results_files():
    """benchmarks/RESULTS.md is `python -m benchmarks.report`'s output, never hand-edited."""
    text = report(RESULTS_DIR)
    with open(RESULTS_MD) as f:
        assert f.read() == text, (
            "benchmarks/RESULTS.md differs from its generator: run python -m benchmarks.report")
    # Real figures from one file: TensorFlow's decoding at batch 1 after the
    # 2-D projection kernels, 2.03x the keras-hub baseline.
    with open(os.path.join(RESULTS_DIR, "cpu_tf_2026-11-28c.json")) as f:
        tf_run = json.load(f)
    g = tf_run["backends"][0]["generation"]["batch_1"]
    assert (g["ours_cached_ms"], g["baseline_cached_ms"], g["vs_baseline"]) == (21.3, 43.3, 2.03)
    section = text[text.index("## cpu_tf_2026-11-28c.json"):]
    section = section[: section.index("\n## ")]
    assert "| tensorflow | 1 | 21.3 | 43.3 | 2.03x | 237.14 | 11.13x |" in section
    assert "| tensorflow | on | float32 | 52.5 | 56.1 | 0.94x | 114.6 | 2.04x |" in section
    # Newest first: the run after the 2-D kernels before the one before them.
    assert text.index("## cpu_tf_2026-11-28c.json") < text.index("## cpu_tf_2026-11-28b.json")


def test_report_reads_every_results_shape():
    # benchmarks/accelerator.py: one backend at the top, TFLOP/s, no naive decoding.
    accelerator = {"backend": "jax", "device": "GPU", "date": "2026-01-01",
                   "training": {"jit:float32": {"ours": {"examples_per_s": 9.0, "tflops": 1.5},
                                                "baseline": {"examples_per_s": 3.0,
                                                             "tflops": 0.5},
                                                "speedup": 3.0}},
                   "generation": {"batch_1": {"ours_cached_ms": 2.0,
                                              "baseline_cached_ms": 4.0, "vs_baseline": 2.0}}}
    text = markdown(accelerator)
    assert "Machine: GPU. Date: 2026-01-01." in text
    assert "| jax | on | float32 | 9.0 | 3.0 | 3.0x | 1.5 | 0.5 |" in text
    assert "| jax | 1 | 2.0 | 4.0 | 2.0x |" in text
    # benchmarks/generation.py: a list of backends, batches at the top.
    generation = [{"backend": "torch", "new_tokens": 24,
                   "batch_32": {"cached_ms_per_caption": 5.0, "naive_ms_per_caption": 40.0,
                                "speedup": 8.0}}]
    text = markdown(generation)
    assert "(24 new tokens, greedy)" in text
    assert "| torch | 32 | 5.0 | 40.0 | 8.0x |" in text
    # benchmarks/serving.py, plus a key the report does not know: shown, not dropped.
    text = markdown({"batch_1_ms_per_image": 11.0, "batch_32_ms_per_image": 2.7,
                            "extra": {"a": 1}})
    assert "11.0 ms/image at batch 1, 2.7 ms/image at batch 32" in text
    assert "| a | 1 |" in text


def test_time_to_quality_reads_the_first_epoch_that_meets_the_target():
    history = {"loss": [3.0, 2.0, 1.0], "val_relation_accuracy": [0.5, 0.97, 0.99],
               "val_hallucination_rate": [0.2, 0.02, 0.0]}
    assert first_epoch_meeting(history, parse_targets("relation_accuracy>=0.97")) == 2
    assert first_epoch_meeting(history, parse_targets(
        "relation_accuracy>=0.97,hallucination_rate<=0.01")) == 3
    assert first_epoch_meeting(history, parse_targets("relation_accuracy>=0.995")) is None


def test_time_to_quality_records_a_finished_run(tmp_path):
    from benchmarks.time_to_quality import main

    history = {"loss": [3.0, 2.0], "elapsed_seconds": [100.0, 200.0],
               "val_relation_accuracy": [0.5, 0.6], "val_object_accuracy": [0.8, 0.9]}
    (tmp_path / "shapes.history.json").write_text(
        json.dumps({"history": history, "backend": "tensorflow"}))
    (tmp_path / "shapes.report.json").write_text(
        json.dumps({"grounded": {"relation_accuracy": 0.61234}}))
    output = tmp_path / "ttq.json"
    assert main(["--history", str(tmp_path / "shapes.history.json"), "--wall-seconds", "321",
                 "--output", str(output)]) == 0
    entry = json.loads(output.read_text())["time_to_quality"]["tensorflow"]
    assert entry == {"backend": "tensorflow", "target": "relation_accuracy>=0.97",
                     "reached": False, "epochs": 2, "train_seconds_to_target": 200.0,
                     "wall_seconds": 321.0,
                     "validation": {"relation_accuracy": 0.6, "object_accuracy": 0.9},
                     "test": {"relation_accuracy": 0.6123}}


@pytest.mark.slow
@pytest.mark.skipif(keras.config.backend() != "jax",
                    reason="it drives train.py in a subprocess of the backend asked for: one "
                           "suite is enough, and train.py is tested on every backend")
def test_time_to_quality_runs_train_py_from_a_fresh_cache_until_the_target():
    entry = time_to_quality("jax", "configs/tiny.py", "object_accuracy>=0.0",
                            ["--set", "train.validation_images=8", "--set", "train.epochs=3",
                             "--set", "train.report_images=8"])
    assert entry["reached"] and entry["epochs"] == 1  # met after the first epoch
    assert 0 < entry["train_seconds_to_target"] < entry["wall_seconds"]
    assert set(entry["validation"]) == {"object_accuracy", "relation_accuracy",
                                        "hallucination_rate", "exact_scene_accuracy"}
    assert 0.0 <= entry["test"]["object_accuracy"] <= 1.0


def test_training_speed_times_fit_steps_of_a_configs_model():
    from benchmarks.training_speed import measure

    row = measure("configs/tiny.py", captions_per_image=2, steps=2, rounds=1)
    assert row["backend"] == keras.config.backend() and row["batch_size"] == 16
    assert row["ms_per_step"] > 0
    # Each figure is rounded on its own: ms_per_step to 0.1 ms, the others to 0.01 ms.
    assert row["ms_per_caption"] == pytest.approx(row["ms_per_step"] / 16, abs=0.05 / 16 + 0.006)
    assert row["ms_per_image"] == pytest.approx(row["ms_per_step"] / 8, abs=0.05 / 8 + 0.006)


@pytest.mark.skipif(keras.config.backend() != "tensorflow",
                    reason="the probe reads logits the generation tests check on every backend")
def test_direction_probe_flips_the_relation_word_and_finds_the_shipped_model_knows_it(capsys):
    from benchmarks.direction_probe import flipped
    from benchmarks.direction_probe import main
    from tests.generation.test_generator import MODEL

    assert flipped("a photo of a red circle to the left of a blue square") == (
        "a photo of a red circle to the right of a blue square")
    assert flipped("a red circle below a blue square") == "a red circle above a blue square"
    main([MODEL, "--scenes", "40"])
    out = capsys.readouterr().out
    share = float(out.split("preferred on ")[1].split("%")[0])
    assert share >= 80.0  # the shipped model: 99.6% on 600 scenes
    assert "three-object scenes: the true anchor preferred on" in out


def test_anchor_swaps_name_the_object_the_first_relation_is_false_of():
    from benchmarks.direction_probe import anchor_swaps
    from vlm.datasets.shapes.captions import generate_examples
    from vlm.datasets.shapes.vocabulary import dominant_relation
    from vlm.metrics.grounded import parse_caption

    swaps = 0
    for example in generate_examples(60, seed=5):
        if len(example["objects"]["shape"]) != 3:
            continue
        swap = anchor_swaps(example)
        objects = {(size, color, shape): (x, y) for shape, color, size, x, y in zip(
            *(example["objects"][k] for k in ("shape", "color", "size", "x", "y")))}
        if swap is None:
            continue
        (true_mentions, true_relations), (mentions, relations) = (
            parse_caption(text) for text in swap[:2])
        swaps += 1
        assert swap[0] == example["captions"][0]
        words = swap[1].split()
        anchor = tuple(words[i] for i in swap[2])
        assert anchor in objects and anchor not in true_mentions[:2]
        # The swapped first clause relates the subject to the third object, falsely.
        subject, relation, other = relations[0]
        assert mentions[other] == anchor and true_relations[0][1] == relation
        (sx, sy), (ox, oy) = objects[mentions[subject]], objects[anchor]
        assert dominant_relation({"x": sx, "y": sy}, {"x": ox, "y": oy}) != relation
    assert swaps >= 3
