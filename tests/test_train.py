import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import train
from vlm.backend import resolve_jit_compile
from vlm.config import DataConfig
from vlm.datasets import load_examples
from vlm.models.captioner import Captioner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUNDED_KEYS = {"object_accuracy", "color_accuracy", "shape_accuracy", "size_accuracy",
                 "relation_accuracy", "exact_scene_accuracy", "hallucination_rate"}


@pytest.mark.slow
def test_tiny_run_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "models"
    code = train.main([
        "--config", os.path.join(REPO, "configs", "tiny.py"),
        "--set", f"train.output_dir={out}",
        "--set", f"train.log_dir={tmp_path / 'logs'}",
        "--set", "train.report_images=8",
        "--set", "train.captions_per_image=2",  # 8 images x 2 captions per batch
    ])
    assert code == 0
    model = keras.saving.load_model(out / "tiny.keras")
    assert isinstance(model, Captioner)
    assert model.tokenizer.vocabulary_size() > 10  # the tokenizer came along
    assert model.tokenizer.token_to_id("[PAD]") == 0
    images = np.zeros((2, 16, 16, 3), "float32")
    logits = model({"images": images, "tokens": np.full((2, 4), 2, "int32")})
    assert tuple(logits.shape) == (2, 4, model.tokenizer.vocabulary_size())

    config = json.loads((out / "tiny.config.json").read_text())
    assert config["train"]["output_dir"] == str(out) and config["model"]["image_size"] == 16
    history = json.loads((out / "tiny.history.json").read_text())
    assert len(history["history"]["loss"]) == 2
    assert history["history"]["loss"][1] < history["history"]["loss"][0]
    report = json.loads((out / "tiny.report.json").read_text())
    assert report["num_images"] == 8 and set(report["grounded"]) == GROUNDED_KEYS
    assert all(0.0 <= v <= 1.0 for v in report["grounded"].values())
    assert (out / "tiny.best.keras").exists()
    printed = capsys.readouterr().out
    assert "Report:" in printed
    assert (f"Training steps: jit_compile={resolve_jit_compile('auto')} (train.jit_compile="
            f"'auto' on {keras.config.backend()})") in printed  # the default, resolved
    assert ", 2 captions per image in a batch" in printed


@pytest.mark.parametrize("args, message", [
    (["--set", "train.epoch=3"], "Unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["--set", "model.decoder_heads=5"], "model.decoder_heads must divide model.decoder_dim"),
    (["--config", "configs/nope.py"], "Config file not found: configs/nope.py"),
])
def test_bad_command_lines_say_what_is_wrong(args, message, capsys):
    assert train.main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(keras.config.backend() != "tensorflow",
                    reason="backend-independent (train.py stops at the config, before any "
                           "backend work): runs in the TensorFlow suite")
@pytest.mark.parametrize("args, line", [
    (["--set", "train.epoch=3"], "Unknown config key 'train.epoch' (did you mean "
                                 "'train.epochs'?). Received: train.epoch=3"),
    (["--set", "train.batch_size=big"], "train.batch_size expects int. Received: 'big'"),
    (["--set", "train.epochs=0"], "train.epochs must be positive. Received: 0"),
    (["--set", "model.image_size=-64"], "model.image_size must be positive. Received: -64"),
    (["--set", "train.captions_per_image=3"], "train.captions_per_image must divide "
     "train.batch_size. Received: captions_per_image=3, batch_size=64"),
    (["--set", "model.encoder_dim=102"], "model.encoder_heads must divide model.encoder_dim. "
                                         "Received: encoder_heads=4, encoder_dim=102"),
    (["--set", "model.decoder_dim=250"], "model.decoder_heads must divide model.decoder_dim. "
                                         "Received: decoder_heads=4, decoder_dim=250"),
    (["--set", "model.num_key_value_heads=3"],
     "model.num_key_value_heads must divide model.decoder_heads. "
     "Received: num_key_value_heads=3, decoder_heads=4"),
    (["--config", "BAD", "--set", "train.epochs=2"],
     "BAD: Unknown config key 'model.hidden_dim' (did you mean 'model.encoder_dim'?). "
     "Received: ModelConfig(hidden_dim=...)"),
])
def test_train_py_rejects_bad_configs_in_one_line(args, line, tmp_path):
    """`python train.py`: exit code 2, one line on stderr, no traceback, nothing trained."""
    bad = tmp_path / "bad.py"
    bad.write_text("from vlm.config import Config, ModelConfig\n"
                   "def get_config():\n    return Config(model=ModelConfig(hidden_dim=128))\n")
    args = [str(bad) if a == "BAD" else a for a in args]
    line = line.replace("BAD", str(bad))
    result = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"train.py: error: {line}"]
    assert result.stdout == ""


def test_preparing_the_shapes_dataset_prints_one_progress_line(tmp_path, capsys, caplog):
    """No TFDS warnings about the config made on the fly; one line that counts the images."""
    data = DataConfig(train_size=5, validation_size=2, test_size=3, data_dir=str(tmp_path))
    with caplog.at_level(logging.INFO):
        examples = load_examples(data, "train", image_size=16)
        load_examples(data, "test", image_size=16)  # prepared: nothing printed
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and printed.startswith("\r")
    final = printed.split("\r")[-1]  # the line as it was left
    assert final.startswith(f"Preparing shapes dataset (16px) in {tmp_path}")
    assert "100%" in final and " 10/10 " in final
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("custom data configuration" in w or "dataset_info.json" in w
                   for w in warnings), warnings
    assert sorted(int(e["image_id"]) for e in examples) == [0, 1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.skipif(keras.config.backend() != "torch",
                    reason="the recipe's orchestration is backend-free Python: one suite runs "
                           "it, PyTorch's (the cheapest; TensorFlow compiles a decoding loop "
                           "per prompt length, about 5 min); the adapter model's paths are "
                           "tested on every backend in tests/models/test_vision_language_model.py")
def test_adapter_recipe_trains_only_the_blocks_of_a_text_trained_language_model(tmp_path):
    """The offline Flamingo recipe at toy size: LM on text, frozen, then gated blocks."""
    from vlm.config import DataConfig
    from vlm.evaluation import evaluate_model
    from vlm.models.vision_language_model import VisionLanguageModel

    out = tmp_path / "models"
    code = train.main([
        "--config", os.path.join(REPO, "configs", "tiny.py"),
        "--set", "model.architecture=adapter", "--set", "model.decoder_layers=2",
        "--set", "model.sequence_length=20", "--set", "model.adapter_mlp_dim=16",
        "--set", "data.dataset=shapes_qa", "--set", "train.name=qa",
        "--set", "train.language_model_epochs=1", "--set", "train.epochs=1",
        "--set", "train.language_model_text=scene",
        "--set", "train.language_model_sequence_length=48",
        "--set", "train.captions_per_image=4", "--set", "train.report_images=0",
        "--set", "train.freeze_encoder_epochs=1", "--set", "train.validation_images=16",
        "--set", f"train.output_dir={out}", "--set", f"train.log_dir={tmp_path / 'logs'}",
    ])
    assert code == 0
    language_model = keras.saving.load_model(out / "qa.language_model.keras")
    model = keras.saving.load_model(out / "qa.keras")
    assert isinstance(model, VisionLanguageModel) and model.backbone.decoder.positions == (0, 1)
    # Its text held each question after a scene caption too, 48 tokens a row; it was
    # asked the validation questions with the scene written out and without.
    assert language_model.max_sequence_length == 48 and model.sequence_length == 20
    text_record = json.loads((out / "qa.language_model.json").read_text())
    assert text_record["text"] == "scene" and text_record["steps"] >= 1
    for asked in ("with_scene", "question_only"):
        scores = text_record["answers"][asked]
        assert scores["num_questions"] == 6 * 16
        assert scores["answer_accuracy"] in [k / 96 for k in range(97)]
    # The LM trained on text, then stayed frozen: the model holds its weights as saved.
    for ours, saved in zip(model.language_model.weights, language_model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours),
                                      keras.ops.convert_to_numpy(saved))
    blocks = sum(int(np.prod(w.shape)) for b in model.backbone.decoder.blocks for w in b.weights)
    history = json.loads((out / "qa.history.json").read_text())
    assert history["trainable_parameters"] == blocks  # the encoder frozen too
    # Each epoch logs the validation answer accuracy (16 images x 6 questions) and its time.
    accuracy = history["history"]["val_answer_accuracy"]
    assert len(accuracy) == 1 and accuracy[0] in [k / 96 for k in range(97)]
    assert 0 < history["history"]["elapsed_seconds"][0] <= history["train_seconds"]
    data = DataConfig(dataset="shapes_qa", train_size=64, validation_size=16, test_size=16)
    metrics, rows, _ = evaluate_model(model, data, "test", batch_size=8, max_images=2)
    assert len(rows) == 12 and metrics["num_questions"] == 12
    assert metrics["trainable_fraction"] == pytest.approx(blocks / model.count_params())
    hits = [r["prediction"] == r["answer"] for r in rows]
    assert metrics["answer_accuracy"] == pytest.approx(np.mean(hits))
    colour = [h for h, r in zip(hits, rows) if r["type"] == "colour"]
    assert metrics["answer_accuracy_colour"] == pytest.approx(np.mean(colour))


@pytest.mark.slow
@pytest.mark.skipif(keras.config.backend() != "torch",
                    reason="the preset wiring is the same Python on every backend: one suite "
                           "runs it, PyTorch's (25 s; JAX's takes 80, TensorFlow's minutes)")
def test_the_gemma_preset_recipe_trains_its_blocks_with_gemmas_tokenizer(tmp_path, monkeypatch):
    """configs/coco_gemma_adapter.py, presets replaced by tiny models built offline."""
    import keras_hub

    from tests.preset_stand_ins import gemma_tokenizer
    from vlm.config import load_config
    from vlm.export.saved_model import export_model
    from vlm.training import train as train_config

    # Made by `from_preset`, after train() seeds TensorFlow: seeding clears the
    # eager kernels, and with them a SentencePiece tokenizer made earlier.
    tokenizer = gemma_tokenizer()
    loaded = []

    def stand_in(make):
        def from_preset(preset, **kwargs):
            loaded.append(preset)
            return make()
        return from_preset

    monkeypatch.setattr(keras_hub.models.Tokenizer, "from_preset", stand_in(gemma_tokenizer))
    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", stand_in(
        lambda: keras_hub.models.GemmaBackbone(
            vocabulary_size=tokenizer.vocabulary_size(), num_layers=6, num_query_heads=4,
            num_key_value_heads=1, hidden_dim=16, intermediate_dim=32, head_dim=4)))
    monkeypatch.setattr(keras_hub.models.ViTBackbone, "from_preset", stand_in(
        lambda: keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=1,
                                             num_heads=2, hidden_dim=8, mlp_dim=16)))
    config = load_config(os.path.join(REPO, "configs", "coco_gemma_adapter.py"))
    config.model.image_size, config.model.patch_size, config.model.adapter_mlp_dim = 16, 4, 8
    config.data = DataConfig(train_size=16, validation_size=8, test_size=8, shuffle_buffer=16)
    train = config.train
    train.epochs = train.freeze_encoder_epochs = 1
    train.steps_per_epoch, train.batch_size, train.distribute = 2, 4, "none"
    train.mixed_precision, train.learning_rate = None, 1e-2
    train.output_dir, train.log_dir = str(tmp_path), str(tmp_path / "logs")
    paths = train_config(config)
    assert loaded == ["gemma_2b_en", "gemma_2b_en", "vit_base_patch16_224_imagenet"]

    model = keras.saving.load_model(paths["model"])
    assert type(model.tokenizer).__name__ == "GemmaTokenizer"
    assert model.tokenizer.get_vocabulary() == tokenizer.get_vocabulary()
    assert model.backbone.decoder.positions == (5,)  # before every 6th layer
    history = json.loads(open(paths["history"]).read())
    blocks = sum(int(np.prod(w.shape)) for b in model.backbone.decoder.blocks for w in b.weights)
    assert history["trainable_parameters"] == blocks and history["optimizer_steps"] == 2
    gates = keras.ops.convert_to_numpy(model.backbone.decoder.blocks[0].cross_attention.gate)
    assert np.all(gates != 0)  # they trained
    images = np.zeros((2, 16, 16, 3), "float32")
    captions = model.generate(images, max_length=4)
    answers = model.generate(images, prompts=["is there a red circle", "what colour is the circle"],
                             max_length=3)
    assert all(isinstance(c, str) for c in captions + answers)
    with pytest.raises(ValueError, match="this model's tokenizer is a GemmaTokenizer"):
        export_model(model, str(tmp_path / "served"))


def test_the_configs_backend_is_used_unless_the_user_chose_one(monkeypatch):
    monkeypatch.delitem(sys.modules, "keras")  # as in a fresh train.py process
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert train.choose_backend("torch") is None
    assert os.environ["KERAS_BACKEND"] == "torch"
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # the user's choice wins
    assert train.choose_backend("tensorflow") is None and os.environ["KERAS_BACKEND"] == "jax"
    monkeypatch.delenv("KERAS_BACKEND")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # not installed
    assert train.choose_backend("torch") == (
        "train.backend='torch' trains this config fastest, but torch is not installed: "
        "Keras' default backend runs it")
    assert "KERAS_BACKEND" not in os.environ
