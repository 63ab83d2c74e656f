import json
import os

import pytest

from vlm.config import Config
from vlm.config import ConfigError
from vlm.config import DataConfig
from vlm.config import ModelConfig
from vlm.config import TrainConfig
from vlm.config import apply_overrides
from vlm.config import load_config
from vlm.config import parse_targets

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
        "model.encoder_preset=none", "data.dataset=coco", "model.adapter_gate=vector",
        "model.adapter_gate_scale=10",
    ])
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.train.learning_rate == pytest.approx(2e-4)
    assert config.train.jit_compile is False
    assert config.model.num_key_value_heads == 2
    assert config.train.mixed_precision == "mixed_bfloat16"
    assert config.model.encoder_preset is None
    assert config.data.dataset == "coco"
    assert config.model.adapter_gate == "vector"
    assert config.model.adapter_gate_scale == 10.0 and isinstance(
        config.model.adapter_gate_scale, float)
    assert (ModelConfig().adapter_gate, ModelConfig().adapter_gate_scale) == ("scalar", 1.0)


@pytest.mark.parametrize("raw, value", [("auto", "auto"), ("true", True), ("True", True),
                                        ("false", False), ("0", False)])
def test_jit_compile_is_true_false_or_auto(raw, value):
    assert TrainConfig().jit_compile == "auto"
    config = apply_overrides(Config(), [f"train.jit_compile={raw}"])
    assert config.train.jit_compile == value and type(config.train.jit_compile) is type(value)
    assert json.loads(config.to_json())["train"]["jit_compile"] == value


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", r"Unknown config key 'train.epoch' \(did you mean 'train.epochs'\?\)"),
        ("trian.epochs=3", r"Unknown config key 'trian.epochs' \(did you mean 'train'\?\)"),
        ("train.epochs=three", r"train.epochs expects int. Received: 'three'"),
        ("train.jit_compile=maybe",
         r"^train.jit_compile must be True, False or 'auto'. Received: 'maybe'$"),
        ("train.jit_compile=XLA",
         r"^train.jit_compile must be True, False or 'auto'. Received: 'XLA'$"),
        ("model.image_size=-64", r"model.image_size must be positive. Received: -64"),
        ("model.decoder_heads=3",
         r"model.decoder_heads must divide model.decoder_dim. Received: decoder_heads=3, "
         r"decoder_dim=256"),
        ("model.patch_size=7", r"model.patch_size must divide model.image_size"),
        ("model.encoder_stem_layers=4",
         r"2\*\*encoder_stem_layers must divide model.patch_size.* Received: "
         r"encoder_stem_layers=4, patch_size=8"),
        ("model.dropout=1.5", r"model.dropout must be in \[0, 1\). Received: 1.5"),
        ("data.dataset=imagenet", r"data.dataset must be one of .* Received: 'imagenet'"),
        ("train.mixed_precision=fp8", r"train.mixed_precision must be one of"),
        ("epochs", r"must look like section.key=value. Received: 'epochs'"),
        # Unknown keys, wrong types, zero and negative sizes, non-finite numbers.
        ("train.epoch=3", r"\(did you mean 'train.epochs'\?\)\. Received: train.epoch=3$"),
        ("model.hidden_dim=64", r"Unknown config key 'model.hidden_dim' .*"
                                r"Received: model.hidden_dim=64$"),
        ("train.batch_size=1.5", r"^train.batch_size expects int. Received: '1.5'$"),
        ("train.learning_rate=fast", r"^train.learning_rate expects float. Received: 'fast'$"),
        ("train.epochs=0", r"^train.epochs must be positive. Received: 0$"),
        ("train.batch_size=-8", r"^train.batch_size must be positive. Received: -8$"),
        ("data.train_size=0", r"^data.train_size must be positive. Received: 0$"),
        ("train.steps_per_epoch=0", r"^train.steps_per_epoch must be positive. Received: 0$"),
        ("model.decoder_mlp_dim=-1", r"^model.decoder_mlp_dim must be positive. Received: -1$"),
        ("train.weight_decay=-0.1", r"^train.weight_decay must be >= 0. Received: -0.1$"),
        ("train.learning_rate=nan", r"^train.learning_rate must be a finite number. "
                                    r"Received: nan$"),
        ("train.learning_rate=inf", r"^train.learning_rate must be a finite number. "
                                    r"Received: inf$"),
        ("train.name=", r"^train.name must be a file name .* Received: ''$"),
        ("train.name=runs/a", r"^train.name must be a file name .* Received: 'runs/a'$"),
        # Head counts that do not divide the widths.
        ("model.encoder_dim=102", r"^model.encoder_heads must divide model.encoder_dim. "
                                  r"Received: encoder_heads=4, encoder_dim=102$"),
        ("model.decoder_dim=250", r"^model.decoder_heads must divide model.decoder_dim. "
                                  r"Received: decoder_heads=4, decoder_dim=250$"),
        ("model.encoder_heads=3", r"^model.encoder_heads must divide model.encoder_dim. "
                                  r"Received: encoder_heads=3, encoder_dim=256$"),
        ("model.num_key_value_heads=3",
         r"^model.num_key_value_heads must divide model.decoder_heads. "
         r"Received: num_key_value_heads=3, decoder_heads=4$"),
        ("model.num_key_value_heads=0", r"^model.num_key_value_heads must be positive. "
                                        r"Received: 0$"),
        ("train.backend=numpy", r"^train.backend must be one of \(None, 'tensorflow', 'jax', "
                                r"'torch'\). Received: 'numpy'$"),
        ("model.encoder_coordinates=true model.encoder_stem_layers=0",
         r"^model.encoder_coordinates feeds the stem, so it needs model.encoder_stem_layers "
         r"> 0. Received: encoder_stem_layers=0$"),
        ("model.encoder_stem_positions=true model.encoder_stem_layers=0",
         r"^model.encoder_stem_positions feeds the stem"),
        ("train.schedule=step",
         r"^train.schedule must be one of \('cosine', 'linear', 'wsd'\). Received: 'step'$"),
        ("train.optimizer=sgd",
         r"^train.optimizer must be one of \('adamw', 'muon'\). Received: 'sgd'$"),
        ("train.decay_fraction=1.5", r"^train.decay_fraction must be in \(0, 1\]. Received: 1.5$"),
        ("model.encoder_relative_init=cones",
         r"^model.encoder_relative_init must be one of \('zeros', 'directions'\). "
         r"Received: 'cones'$"),
        ("model.encoder_side_memory=true model.num_images=2",
         r"^model.encoder_side_memory gives the decoder slots, not a patch grid, .* Received: "
         r"architecture='captioner', num_images=2, decoder_focus_shift=False, "
         r"decoder_position_readout=False$"),
        ("model.image_difference=true",
         r"^model.image_difference gives each image what changed since the one before, .* "
         r"Received: architecture='captioner', num_images=1, multi_image='interleaved', "
         r"media_mode='all_previous'$"),
        ("model.image_difference=true model.num_images=2 model.media_mode=immediate",
         r"^model.image_difference .* media_mode='immediate'$"),
        ("train.long_caption_repeats=0",
         r"^train.long_caption_repeats must be positive. Received: 0$"),
        ("train.language_model_text=captions",
         r"^train.language_model_text must be one of \('task', 'scene'\). "
         r"Received: 'captions'$"),
        ("model.adapter_gate=matrix",
         r"^model.adapter_gate must be one of \('scalar', 'vector'\). Received: 'matrix'$"),
        ("model.adapter_gate_scale=0", r"^model.adapter_gate_scale must be positive. "
                                       r"Received: 0.0$"),
        ("model.adapter_gate_scale=-3", r"^model.adapter_gate_scale must be positive. "
                                        r"Received: -3.0$"),
        ("train.language_model_sequence_length=-1",
         r"^train.language_model_sequence_length must be >= 0. Received: -1$"),
        # Stopping targets.
        ("train.stop_at=relation_accuracy>0.97",
         r"^train.stop_at: each target must look like score>=number or score<=number, .* "
         r"got 'relation_accuracy>0.97'. Received: 'relation_accuracy>0.97'$"),
        ("train.stop_at=relation_accuracy>=0.97",
         r"^train.stop_at needs train.validation_images > 0"),
        ("train.validation_images=8 data.dataset=coco",
         r"^train.validation_images scores captions against scene graphs or answers: "
         r"data.dataset must be one of \('shapes', 'shapes_qa'\). Received: "
         r"validation_images=8, dataset='coco'$"),
    ],
)
def test_bad_overrides_name_the_key_and_value(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        apply_overrides(Config(), override.split(" "))  # one override, or several
    assert "\n" not in str(error.value)  # one line


def test_sections_validate_themselves():
    assert ModelConfig(encoder_dim=64, encoder_heads=4).validate() is None
    with pytest.raises(ConfigError, match=r"^model.decoder_heads must divide model.decoder_dim. "
                                          r"Received: decoder_heads=4, decoder_dim=30$"):
        ModelConfig(decoder_dim=30).validate()
    with pytest.raises(ConfigError, match=r"^data.max_references must be positive"):
        DataConfig(max_references=0).validate()
    with pytest.raises(ConfigError, match=r"^train.epochs must be int. Received: 2.5 \(float\)$"):
        TrainConfig(epochs=2.5).validate()
    with pytest.raises(ConfigError, match=r"^model must be a ModelConfig. Received: dict$"):
        Config(model={"image_size": 64}).validate()
    assert Config().validate().train.epochs == 10


BAD_CONFIG_FILES = [
    ("return Config(model=ModelConfig(hidden_dim=128))",
     r"bad.py: Unknown config key 'model.hidden_dim' .*Received: ModelConfig\(hidden_dim=...\)$"),
    ("c = Config(); c.model.hiden_dim = 128; return c",
     r"bad.py: Unknown config key 'model.hiden_dim' .*Received: model.hiden_dim=128$"),
    ("return Config(train=TrainConfig(batch_size='64'))",
     r"bad.py: train.batch_size must be int. Received: '64' \(str\)$"),
    ("return Config(train=TrainConfig(jit_compile='xla'))",
     r"bad.py: train.jit_compile must be True, False or 'auto'. Received: 'xla'$"),
    ("return Config(train=TrainConfig(jit_compile=1))",
     r"bad.py: train.jit_compile must be bool or str. Received: 1 \(int\)$"),
    ("return Config(train=TrainConfig(epochs=0))",
     r"bad.py: train.epochs must be positive. Received: 0$"),
    ("return Config(data=DataConfig(validation_size=-5))",
     r"bad.py: data.validation_size must be positive. Received: -5$"),
    ("return Config(model=ModelConfig(decoder_dim=100, decoder_heads=8))",
     r"bad.py: model.decoder_heads must divide model.decoder_dim. "
     r"Received: decoder_heads=8, decoder_dim=100$"),
    ("return Config(model=ModelConfig(encoder_dim=96, encoder_heads=5))",
     r"bad.py: model.encoder_heads must divide model.encoder_dim. "
     r"Received: encoder_heads=5, encoder_dim=96$"),
    ("return Config(model=ModelConfig(decoder_heads=4, num_key_value_heads=3))",
     r"bad.py: model.num_key_value_heads must divide model.decoder_heads. "
     r"Received: num_key_value_heads=3, decoder_heads=4$"),
]


@pytest.mark.parametrize("body, message", BAD_CONFIG_FILES)
def test_bad_config_files_name_the_file_key_and_value(tmp_path, body, message):
    path = tmp_path / "bad.py"
    path.write_text("from vlm.config import Config, DataConfig, ModelConfig, TrainConfig\n"
                    f"def get_config():\n    {body}\n")
    with pytest.raises(ConfigError, match=message) as error:
        load_config(str(path))
    assert "\n" not in str(error.value)


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


def test_stopping_targets_parse_to_comparisons():
    assert parse_targets("") == {}
    assert parse_targets("relation_accuracy>=0.97, hallucination_rate<=0.01") == {
        "relation_accuracy": (">=", 0.97), "hallucination_rate": ("<=", 0.01)}
