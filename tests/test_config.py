import json
import os

import pytest

from vlm.config import Config, ConfigError, apply_overrides, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["shapes", "tiny", "coco_vit_b16"])
def test_shipped_configs_load_and_validate(name):
    config = load_config(os.path.join(REPO, "configs", f"{name}.py"))
    assert isinstance(config, Config)
    assert json.loads(config.to_json())["train"]["name"] == name


def test_overrides_are_parsed_to_the_field_type():
    config = apply_overrides(Config(), [
        "train.epochs=3", "train.learning_rate=2e-4", "train.jit_compile=false",
        "model.num_key_value_heads=2", "train.mixed_precision=mixed_bfloat16",
        "model.encoder_preset=none", "data.dataset=coco",
    ])
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.train.learning_rate == pytest.approx(2e-4)
    assert config.train.jit_compile is False
    assert config.model.num_key_value_heads == 2
    assert config.train.mixed_precision == "mixed_bfloat16"
    assert config.model.encoder_preset is None
    assert config.data.dataset == "coco"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", r"Unknown config key 'train.epoch' \(did you mean 'train.epochs'\?\)"),
        ("trian.epochs=3", r"Unknown config key 'trian.epochs' \(did you mean 'train'\?\)"),
        ("train.epochs=three", r"train.epochs expects int. Received: 'three'"),
        ("train.jit_compile=maybe", r"train.jit_compile expects bool. Received: 'maybe'"),
        ("model.image_size=-64", r"model.image_size must be positive. Received: -64"),
        ("model.decoder_heads=3",
         r"model.decoder_heads must divide model.decoder_dim. Received: decoder_heads=3, "
         r"decoder_dim=256"),
        ("model.patch_size=7", r"model.patch_size must divide model.image_size"),
        ("model.dropout=1.5", r"model.dropout must be in \[0, 1\). Received: 1.5"),
        ("data.dataset=imagenet", r"data.dataset must be one of .* Received: 'imagenet'"),
        ("train.mixed_precision=fp8", r"train.mixed_precision must be one of"),
        ("epochs", r"must look like section.key=value. Received: 'epochs'"),
    ],
)
def test_bad_overrides_name_the_key_and_value(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [override])


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="Config file not found: .*missing.py"):
        load_config(str(tmp_path / "missing.py"))
    path = tmp_path / "bad.py"
    path.write_text("def get_config():\n    return {'train': 1}\n")
    with pytest.raises(ConfigError, match=r"bad.py: get_config\(\) must return .* Received: dict"):
        load_config(str(path))
    path.write_text(
        "from vlm.config import Config\n"
        "def get_config():\n    c = Config()\n    c.train.epochs = '3'\n    return c\n")
    with pytest.raises(ConfigError, match=r"train.epochs must be int. Received: '3' \(str\)"):
        load_config(str(path))
