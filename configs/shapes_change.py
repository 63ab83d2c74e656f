"""Change captioning: one caption for a (before, after) pair of shapes scenes.

    python train.py --config configs/shapes_change.py
    python evaluate.py --model saved_models/shapes_change.keras

The two images are read as one interleaved context, `<image> <image>
[START] caption`, every caption token seeing both images ("all_previous"),
the after image's patches carrying how they differ from the before image's
(`model.image_difference`);
`--set model.multi_image=sources` reads them with one cross attention each
instead (docs/multi_image.md compares the two).
"""

from vlm.config import Config
from vlm.config import DataConfig
from vlm.config import ModelConfig
from vlm.config import TrainConfig


def get_config():
    return Config(
        model=ModelConfig(
            image_size=64,
            patch_size=8,
            encoder_stem_layers=3,  # the encoder of saved_models/shapes.keras
            encoder_layers=2,
            encoder_heads=4,
            encoder_dim=128,
            encoder_mlp_dim=256,
            encoder_relative_layers=1,
            encoder_relative_init="directions",
            # The shipped shapes captioner's encoder (these sizes), frozen:
            # it already tells objects, colours and places apart.
            encoder_from="saved_models/shapes.keras",
            decoder_layers=3,
            decoder_heads=4,
            decoder_dim=128,
            decoder_mlp_dim=256,
            sequence_length=20,  # two markers, [START], the longest caption, [END]
            vocabulary_size=200,
            dropout=0.0,
            num_images=2,
            multi_image="interleaved",
            media_mode="all_previous",
            # The after image also carries how it differs from the before one:
            # moves right 99% of the time with it, 66% without (docs/multi_image.md).
            image_difference=True,
        ),
        data=DataConfig(dataset="shapes_change", train_size=20000, validation_size=1000,
                        test_size=1000),
        train=TrainConfig(name="shapes_change", epochs=4, batch_size=64, captions_per_image=2,
                          learning_rate=1.5e-3, weight_decay=0.01, report_images=1000,
                          freeze_encoder_epochs=4),
    )
