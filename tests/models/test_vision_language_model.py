import io
import os
import zipfile

import h5py
import keras
import keras_hub
import numpy as np
import pytest

import vlm
from tests.test_case import jit_compile_for_backend
from tests.test_case import run_model_saving_test
from tests.test_case import run_task_test
from tests.test_case import to_numpy
from vlm.compilation import compiled_inference
from vlm.config import ModelConfig
from vlm.data.tokenizer import train_tokenizer
from vlm.models.cross_attention_language_model import cross_attention_positions
from vlm.models.image_encoder import ImageEncoder
from vlm.models.vision_language_backbone import VisionLanguageBackbone
from vlm.models.vision_language_model import VisionLanguageModel
from vlm.models.vision_language_model import build_language_model
from vlm.models.vision_language_model import build_vision_language_model

TEXTS = ["question what colour is the small circle answer red",
         "question is there a large blue square answer yes",
         "a small red circle left of a large blue square"]
LENGTH = 16


def make_tokenizer():
    return train_tokenizer(TEXTS * 10, 60)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def backbone(kind, vocabulary_size, num_layers=2):
    sizes = dict(vocabulary_size=vocabulary_size, num_layers=num_layers, hidden_dim=16,
                 intermediate_dim=32)
    if kind == "gpt2":
        return keras_hub.models.GPT2Backbone(num_heads=2, max_sequence_length=LENGTH, dropout=0.0,
                                             **sizes)
    if kind == "llama":
        return keras_hub.models.LlamaBackbone(num_query_heads=4, num_key_value_heads=2, **sizes)
    return keras_hub.models.GemmaBackbone(num_query_heads=2, num_key_value_heads=1, head_dim=8,
                                          **sizes)


def encoder():
    return ImageEncoder.from_sizes(image_size=16, patch_size=4, num_layers=1, num_heads=2,
                                   hidden_dim=16, mlp_dim=32, name="encoder")


def make_model(tokenizer, kind="gpt2", open_gates=True, **kwargs):
    keras.utils.set_random_seed(0)
    if "cross_attention_layers" not in kwargs:
        kwargs.setdefault("cross_attention_every", 1)
    graph = VisionLanguageBackbone(backbone(kind, tokenizer.vocabulary_size()), encoder(),
                                   sequence_length=LENGTH, **kwargs)
    model = VisionLanguageModel(graph, tokenizer=tokenizer)
    if open_gates:  # as after training: the image changes the text
        for i, block in enumerate(model.backbone.decoder.blocks):
            block.cross_attention.gate.assign(0.8 + 0.1 * i)
            block.mlp_gate.assign(-0.6)
    return model


def inputs(vocabulary_size, n=3, length=10, seed=0):
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 16, 16, 3)) * 255).astype("float32")
    return images, rng.integers(1, vocabulary_size, (n, length)).astype("int32")


def model_and_bare_logits(model, images, tokens):
    """The model's logits and its language model's alone, on the same tokens."""
    lm = model.language_model
    ours = to_numpy(model({"images": images, "tokens": tokens}))
    hidden = lm({"token_ids": tokens, "padding_mask": np.ones_like(tokens)})
    return ours, to_numpy(lm.token_embedding(hidden, reverse=True))


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma"])
def test_identical_to_the_bare_language_model_at_initialisation(tokenizer, kind):
    model = make_model(tokenizer, kind, open_gates=False)
    lm = model.language_model
    images, tokens = inputs(tokenizer.vocabulary_size())
    ours, bare = model_and_bare_logits(model, images, tokens)
    assert np.max(np.abs(ours - bare)) <= 1e-5
    # The same weights, not a copy: moving the LM moves the model.
    lm.token_embedding.embeddings.assign(lm.token_embedding.embeddings * 2.0)
    assert np.max(np.abs(to_numpy(model({"images": images, "tokens": tokens})) - ours)) > 1e-3
    # And once the gates open, the image matters.
    model.backbone.decoder.blocks[0].cross_attention.gate.assign(1.0)
    first = to_numpy(model({"images": images, "tokens": tokens}))
    second = to_numpy(model({"images": images[::-1].copy(), "tokens": tokens}))
    assert np.max(np.abs(first - second)) > 1e-4


def test_vector_gates_start_as_the_bare_language_model(tokenizer):
    model = make_model(tokenizer, open_gates=False, gate_type="vector", gate_scale=10.0)
    images, tokens = inputs(tokenizer.vocabulary_size())
    ours, bare = model_and_bare_logits(model, images, tokens)
    assert np.max(np.abs(ours - bare)) <= 1e-5
    for block in model.backbone.decoder.blocks:
        for gate in (block.cross_attention.gate, block.mlp_gate):
            assert tuple(gate.shape) == (16,)  # the LM's hidden width
            np.testing.assert_array_equal(to_numpy(gate), np.zeros(16))
        assert (block.gate_type, block.gate_scale) == ("vector", 10.0)
    config = model.backbone.get_config()
    assert (config["gate_type"], config["gate_scale"]) == ("vector", 10.0)
    revived = VisionLanguageModel.from_config(model.get_config()).backbone
    revived_config = revived.get_config()
    assert (revived_config["gate_type"], revived_config["gate_scale"]) == ("vector", 10.0)
    assert revived.decoder.blocks[0].gate_scale == 10.0
    # One channel's attention gate open: the image changes the logits.
    model.backbone.decoder.blocks[0].cross_attention.gate.assign(np.eye(16, dtype="float32")[3])
    first = to_numpy(model({"images": images, "tokens": tokens}))
    second = to_numpy(model({"images": images[::-1].copy(), "tokens": tokens}))
    assert np.max(np.abs(first - second)) > 1e-4


def test_the_config_chooses_the_gates(tokenizer):
    config = ModelConfig(image_size=16, patch_size=4, encoder_layers=1, encoder_heads=2,
                         encoder_dim=16, encoder_mlp_dim=32, decoder_layers=2, decoder_heads=2,
                         decoder_dim=16, decoder_mlp_dim=32, sequence_length=LENGTH,
                         architecture="adapter", adapter_mlp_dim=24, adapter_gate="vector",
                         adapter_gate_scale=5.0)
    lm = build_language_model(config, tokenizer.vocabulary_size())
    model = build_vision_language_model(config, tokenizer, lm)
    blocks = model.backbone.decoder.blocks
    assert [(b.gate_type, b.gate_scale) for b in blocks] == [("vector", 5.0)] * 2
    default = build_vision_language_model(ModelConfig(**{**vars(config), "adapter_gate": "scalar",
                                                         "adapter_gate_scale": 1.0}),
                                          tokenizer, lm)
    blocks = default.backbone.decoder.blocks
    assert [(b.gate_type, b.gate_scale) for b in blocks] == [("scalar", 1.0)] * 2


def _stored_gates(path):
    """The gate values in a `.keras` file's weights, read with h5py (not Keras)."""
    with zipfile.ZipFile(path) as archive:
        stored = io.BytesIO(archive.read("model.weights.h5"))
    prefix = "layers/vision_language_backbone/layers/cross_attention_language_model/blocks/"
    with h5py.File(stored, "r") as weights:
        blocks = sorted(weights[prefix], key=lambda name: (len(name), name))  # _2 before _10
        return [(weights[f"{prefix}{b}/cross_attention/vars/0"][()],
                 weights[f"{prefix}{b}/vars/0"][()]) for b in blocks]


def test_a_model_saved_before_gate_options_loads_with_its_gates():
    """The shipped adapter's config has no `gate_type`/`gate_scale`: scalar gates, scale 1."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "saved_models",
                        "shapes_qa_adapter.keras")
    stored = _stored_gates(path)
    model = vlm.load_captioner(path)
    assert len(stored) == len(model.backbone.decoder.blocks) == 4
    for (attention_gate, mlp_gate), block in zip(stored, model.backbone.decoder.blocks):
        assert (block.gate_type, block.gate_scale) == ("scalar", 1.0)
        assert tuple(block.cross_attention.gate.shape) == tuple(block.mlp_gate.shape) == ()
        assert to_numpy(block.cross_attention.gate) == attention_gate != 0.0
        assert to_numpy(block.mlp_gate) == mlp_gate != 0.0


def test_blocks_go_before_every_nth_layer_or_where_asked():
    assert cross_attention_positions(8, every=1) == tuple(range(8))
    assert cross_attention_positions(8, every=4) == (3, 7)  # open_flamingo's layers
    assert cross_attention_positions(8, layers=[5, 1]) == (1, 5)
    with pytest.raises(ValueError, match=r"cross_attention_layers=\[1, 9\]"):
        cross_attention_positions(8, layers=[1, 9])
    with pytest.raises(ValueError, match="exactly one"):
        cross_attention_positions(8, every=2, layers=[1])


def test_freezing_reports_and_trains_only_the_blocks(tokenizer):
    model = make_model(tokenizer, cross_attention_layers=[1], num_key_value_heads=1, mlp_dim=24)
    report = model.freeze_language_model()
    blocks = report["cross_attention"]["parameters"]
    lm = report["language_model"]["parameters"]
    encoder_parameters = report["image_encoder"]["parameters"]
    assert lm == model.language_model.count_params() and not report["language_model"]["trainable"]
    assert report["trainable_parameters"] == blocks
    assert report["total_parameters"] == lm + encoder_parameters + blocks
    total = lm + encoder_parameters + blocks
    assert report["trainable_fraction"] == pytest.approx(blocks / total)
    # 16 -> 2x16 query, 16 -> 8 key and value (one of two heads), 16 -> 16 output, biases,
    # two LayerNorms, 16 -> 24 -> 16, two gates.
    assert blocks == (16 * 16 + 16) + 2 * (16 * 8 + 8) + (16 * 16 + 16) + 4 * 16 + (
        16 * 24 + 24) + (24 * 16 + 16) + 2
    kept = model.language_model.weights + model.backbone.encoder.weights
    frozen = [to_numpy(w).copy() for w in kept]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile_for_backend())
    images, tokens = inputs(tokenizer.vocabulary_size(), n=4)
    gate = to_numpy(model.backbone.decoder.blocks[0].mlp_gate).copy()
    model.fit({"images": images, "tokens": tokens}, np.roll(tokens, -1, axis=1), epochs=2,
              batch_size=4, verbose=0)
    for before, weight in zip(frozen, kept):
        np.testing.assert_array_equal(to_numpy(weight), before)
    assert to_numpy(model.backbone.decoder.blocks[0].mlp_gate) != gate


def naive_answers(model, images, prompts, max_length):
    """Greedy by re-running the whole model on prompt + [START] + answer so far.

    One compiled forward pass over the fixed-length token array per step:
    causal attention makes the padding after each row's prefix irrelevant.
    """
    tok = model.tokenizer
    rows = model.preprocessor.prompt_ids(prompts)
    tokens = np.zeros((len(rows), LENGTH), "int32")
    for i, ids in enumerate(rows):
        tokens[i, :len(ids) + 1] = list(ids) + [tok.start_token_id]
    forward = compiled_inference(
        lambda x, t: model({"images": x, "tokens": t}, training=False), model.variables)
    out = np.full((len(rows), max_length), tok.pad_token_id, "int32")
    done = np.zeros(len(rows), bool)
    for step in range(max_length):
        logits = to_numpy(forward(images, tokens))
        for i, ids in enumerate(rows):
            position = len(ids) + step  # of the last token read
            if not done[i]:
                out[i, step] = tokens[i, position + 1] = np.argmax(logits[i, position])
                done[i] = out[i, step] == tok.end_token_id
    return out


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_prompted_cached_generation_equals_uncached(tokenizer, kind):
    model = make_model(tokenizer, kind)
    images, _ = inputs(tokenizer.vocabulary_size())
    prompts = ["question what colour is the small circle answer",
               "question is there a square answer",
               "question what colour is the large circle answer"]
    details = model.generate(images, prompts=prompts, max_length=4, return_details=True)
    np.testing.assert_array_equal(details["token_ids"],
                                  naive_answers(model, images, prompts, 4))
    # Two prompt lengths: two compiled loops, reused by a second call.
    assert len(model._generate_functions) == 2
    again = model.generate(images[::-1].copy(), prompts=prompts[::-1], max_length=4)
    assert len(model._generate_functions) == 2
    assert again[0] == details["captions"][-1]
    if kind != "gpt2":
        return
    # An empty prompt captions: [START] first.
    caption = model.generate(images[:1], max_length=4, return_details=True)["token_ids"]
    np.testing.assert_array_equal(caption, naive_answers(model, images[:1], [""], 4))


def test_the_shared_task_and_saving_checks(tokenizer, tmp_path):
    model = make_model(tokenizer, cross_attention_every=2)
    model.freeze_language_model()
    images, _ = inputs(tokenizer.vocabulary_size())
    prompts = ["question is there a large blue square answer"] * len(images)
    tokens, labels = (np.asarray(x) for x in model.preprocessor.tokenize(["yes"] * 3, prompts))
    x = {"images": images, "tokens": tokens}
    asked = dict(prompts=prompts, max_length=3)
    run_task_test(model, x, labels, list(images), asked, jit_compile=False)
    loaded = run_model_saving_test(model, x, labels, ["yes"], str(tmp_path / "vlm.keras"))
    assert loaded.backbone.decoder.positions == (1,)
    # Frozen as saved, sublayers included: the same weights train.
    assert loaded.parameter_report() == model.parameter_report()


def test_bad_input_is_named(tokenizer):
    model = make_model(tokenizer, open_gates=False)
    images, _ = inputs(tokenizer.vocabulary_size(), n=1)
    with pytest.raises(ValueError, match=r"Prompt 0 is 20 tokens; .*at most 14"):
        model.generate(images, prompts=["red " * 20])
    with pytest.raises(ValueError, match=r"`images` is empty.*images=\[\]"):
        model.generate([], prompts=[])
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        model.generate(images, prompts=["a", "b"])
    vit = keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=1,
                                       num_heads=2, hidden_dim=8, mlp_dim=8)
    with pytest.raises(ValueError, match=r"GPT2Backbone.*Received: ViTBackbone"):
        VisionLanguageBackbone(vit, encoder())
    with pytest.raises(ValueError, match=r"Received: gate_type='matrix'$"):
        VisionLanguageBackbone(backbone("gpt2", 60), encoder(), gate_type="matrix")
    with pytest.raises(ValueError, match=r"Received: gate_scale='fast'$"):
        VisionLanguageBackbone(backbone("gpt2", 60), encoder(), gate_scale="fast")
    broken = backbone("gpt2", 60)
    del broken.layer_norm
    with pytest.raises(ValueError, match=r"lacks the layers \['layer_norm'\]"):
        VisionLanguageBackbone(broken, encoder())
