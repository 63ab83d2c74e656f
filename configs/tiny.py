"""A seconds-long smoke run for tests: tiny model, tiny shapes dataset."""

from vlm.config import Config
from vlm.config import DataConfig
from vlm.config import ModelConfig
from vlm.config import TrainConfig


def get_config():
    return Config(
        model=ModelConfig(
            image_size=16,
            patch_size=4,
            encoder_layers=1,
            encoder_heads=2,
            encoder_dim=16,
            encoder_mlp_dim=32,
            decoder_layers=1,
            decoder_heads=2,
            decoder_dim=16,
            decoder_mlp_dim=32,
            sequence_length=16,
            vocabulary_size=100,
            dropout=0.0,
        ),
        data=DataConfig(dataset="shapes", train_size=64, validation_size=16,
                        test_size=16, shuffle_buffer=256),
        train=TrainConfig(name="tiny", epochs=2, batch_size=16, learning_rate=1e-3,
                          report_images=16),
    )
