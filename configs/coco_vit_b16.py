"""COCO captions on a pretrained ViT-B/16, for a GPU/TPU user with the data.

Downloads the keras-hub preset `vit_base_patch16_224_imagenet` on first use,
and reads TFDS `coco_captions` (Karpathy splits) from `data.data_dir`:

    python train.py --config configs/coco_vit_b16.py --set data.data_dir=/data/tfds

Data parallel over all local devices (PyTorch has no engine here: add
`--distribute none`). The encoder is frozen for the first epoch, while the
new decoder's first, large gradients would disturb the pretrained features
(`--set train.freeze_encoder_epochs=0` trains everything from the start).
"""

from vlm.config import Config
from vlm.config import DataConfig
from vlm.config import ModelConfig
from vlm.config import TrainConfig


def get_config():
    return Config(
        model=ModelConfig(
            image_size=224,
            patch_size=16,
            # The preset's ViT-B/16 sizes win over these when it loads.
            encoder_layers=12,
            encoder_heads=12,
            encoder_dim=768,
            encoder_mlp_dim=3072,
            encoder_preset="vit_base_patch16_224_imagenet",
            decoder_layers=6,
            decoder_heads=8,
            decoder_dim=512,
            decoder_mlp_dim=2048,
            num_key_value_heads=2,
            sequence_length=32,
            vocabulary_size=10000,
            dropout=0.1,
        ),
        data=DataConfig(dataset="coco", shuffle_buffer=20000),
        train=TrainConfig(
            name="coco_vit_b16",
            epochs=10,
            batch_size=256,
            learning_rate=3e-4,
            weight_decay=0.05,
            mixed_precision="mixed_bfloat16",
            distribute="data_parallel",
            freeze_encoder_epochs=1,
            early_stopping_patience=3,
            report_images=0,
        ),
    )
