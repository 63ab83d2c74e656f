import json
import os

import keras
import numpy as np
import pytest

import train
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
    assert "Report:" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--set", "train.epoch=3"], "Unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["--set", "model.decoder_heads=5"], "model.decoder_heads must divide model.decoder_dim"),
    (["--config", "configs/nope.py"], "Config file not found: configs/nope.py"),
])
def test_bad_command_lines_say_what_is_wrong(args, message, capsys):
    assert train.main(args) == 2
    assert message in capsys.readouterr().err
