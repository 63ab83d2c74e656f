"""COCO captions from a frozen Gemma 2B given eyes: the Flamingo recipe at scale.

Not run by the project (its machines have no GPU and no internet): a config
for a user with an accelerator of about 40 GB and the data. On first use it
downloads the keras-hub presets `gemma_2b_en` (language model and its
SentencePiece tokenizer; Kaggle credentials needed) and
`vit_base_patch16_224_imagenet`, and reads TFDS `coco_captions` (Karpathy
splits) from `data.data_dir`:

    python train.py --config configs/coco_gemma_adapter.py --set data.data_dir=/data/tfds

Gemma and the ViT stay frozen; only the gated cross-attention blocks train,
one before every 6th of Gemma's 18 layers (3 blocks, about 4% of the
weights). The gates start at 0, so the first step's captions are Gemma's
own. `python evaluate.py --model saved_models/coco_gemma_adapter.keras`
scores the result; the SavedModel export serves vlm's own tokenizer only, so
this model is served from Keras (`model.generate`).
"""

from vlm.config import Config
from vlm.config import DataConfig
from vlm.config import ModelConfig
from vlm.config import TrainConfig


def get_config():
    return Config(
        model=ModelConfig(
            architecture="adapter",
            # Its sizes and tokenizer win over decoder_* and vocabulary_size.
            language_model="gemma",
            language_model_preset="gemma_2b_en",
            image_size=224,
            patch_size=16,
            encoder_layers=12,
            encoder_heads=12,
            encoder_dim=768,
            encoder_mlp_dim=3072,
            encoder_preset="vit_base_patch16_224_imagenet",
            sequence_length=32,
            dropout=0.0,
            cross_attention_every=6,
            num_key_value_heads=1,  # Gemma 2B's grouping: one K/V head for 8 queries
            adapter_mlp_dim=4096,
        ),
        data=DataConfig(dataset="coco", shuffle_buffer=20000),
        train=TrainConfig(
            name="coco_gemma_adapter",
            epochs=3,
            batch_size=128,
            learning_rate=1e-4,
            weight_decay=0.01,
            mixed_precision="mixed_bfloat16",
            distribute="data_parallel",
            freeze_encoder_epochs=3,  # the ViT is frozen throughout
            freeze_language_model=True,
            report_images=0,
        ),
    )
