"""Questions about shapes scenes, answered by a frozen GPT-2-config language model given eyes.

    python train.py --config configs/shapes_qa_adapter.py
    python evaluate.py --model saved_models/shapes_qa_adapter.keras

The Flamingo recipe, offline: no pretrained language model can be downloaded
here, so a small GPT-2 first learns the task's text alone (questions,
answers and captions, no images; `train.language_model_epochs`), is saved
beside the model and frozen; then gated cross-attention blocks, inserted
before every layer with their gates at 0, learn to read the shapes
captioner's frozen ViT. Only the blocks train.

`--set train.language_model_text=scene --set
train.language_model_sequence_length=48` also gives the language model every
question after a caption of its scene, where the answer follows from the
text; in one epoch it did not learn to read it (docs/adapters.md).
"""

from vlm.config import Config
from vlm.config import DataConfig
from vlm.config import ModelConfig
from vlm.config import TrainConfig


def get_config():
    return Config(
        model=ModelConfig(
            architecture="adapter",
            language_model="gpt2",
            image_size=64,
            patch_size=8,
            encoder_stem_layers=3,  # the encoder of saved_models/shapes.keras
            encoder_layers=2,
            encoder_heads=4,
            encoder_dim=128,
            encoder_mlp_dim=256,
            encoder_relative_layers=1,
            encoder_relative_init="directions",
            # The shipped shapes captioner's encoder (these sizes), frozen.
            encoder_from="saved_models/shapes.keras",
            # The language model: GPT-2's layout at these sizes.
            decoder_layers=4,
            decoder_heads=4,
            decoder_dim=128,
            decoder_mlp_dim=512,
            sequence_length=24,  # the longest question, [START], answer, [END]
            vocabulary_size=200,
            dropout=0.0,
            # A gated block before every layer, narrow: 24% of the weights.
            cross_attention_every=1,
            adapter_mlp_dim=128,
        ),
        data=DataConfig(dataset="shapes_qa", train_size=20000, validation_size=1000,
                        test_size=1000),
        # 4 "epochs" of 375 steps (1.2 passes over the 120,000 questions), so
        # the validation answer accuracy is logged four times.
        train=TrainConfig(name="shapes_qa_adapter", epochs=4, steps_per_epoch=375,
                          batch_size=96, captions_per_image=6, learning_rate=2e-3,
                          weight_decay=0.01, report_images=1000, validation_images=100,
                          freeze_encoder_epochs=4,
                          freeze_language_model=True, language_model_epochs=1),
    )
