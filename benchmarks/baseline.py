"""The baseline a Keras user would assemble today from keras-hub parts.

keras-hub `ViTBackbone` (no class token) + `TokenAndPositionEmbedding` +
`TransformerDecoder` blocks (their built-in cross attention) + a `Dense`
head, at the same sizes as our captioner. Generation follows keras-hub's own
seq2seq models (`BartSeq2SeqLM.generate_step`): one pass seeds the self- and
cross-attention caches, then `keras_hub.samplers.GreedySampler` runs a
`while_loop` that feeds one token per step, compiled as keras-hub compiles
it (XLA on TensorFlow and JAX, eager on PyTorch).

Only `benchmarks/` uses this; it is what our numbers are compared against.
"""

import keras
import keras_hub
from keras import ops

from vlm.compilation import compiled_inference


def build_baseline(model_config, vocabulary_size):
    """The keras-hub captioner, `{"images", "tokens"} -> logits`, uncompiled."""
    c = model_config
    images = keras.Input((c.image_size, c.image_size, 3), name="images")
    tokens = keras.Input((c.sequence_length,), dtype="int32", name="tokens")
    encoder = keras_hub.models.ViTBackbone(
        image_shape=(c.image_size, c.image_size, 3),
        patch_size=c.patch_size,
        num_layers=c.encoder_layers,
        num_heads=c.encoder_heads,
        hidden_dim=c.encoder_dim,
        mlp_dim=c.encoder_mlp_dim,
        dropout_rate=c.dropout,
        use_class_token=False,
        name="encoder",
    )
    embedding = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size, c.sequence_length, c.decoder_dim, name="embedding"
    )
    decoders = [
        keras_hub.layers.TransformerDecoder(
            intermediate_dim=c.decoder_mlp_dim,
            num_heads=c.decoder_heads,
            dropout=c.dropout,
            normalize_first=True,
            name=f"decoder_{i}",
        )
        for i in range(c.decoder_layers)
    ]
    head = keras.layers.Dense(vocabulary_size, name="logits")
    patches = encoder(images / 127.5 - 1.0)
    x = embedding(tokens)
    for decoder in decoders:
        x = decoder(x, patches)
    model = keras.Model({"images": images, "tokens": tokens}, head(x))
    model.parts = dict(encoder=encoder, embedding=embedding, decoders=decoders, head=head)
    return model


def compile_baseline(model, learning_rate=1e-4, jit_compile="auto"):
    """AdamW and token cross-entropy that ignores padding (id 0)."""
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
        jit_compile=jit_compile,
    )
    return model


def make_greedy_generate(model, new_tokens, start_token_id=2):
    """A compiled `images -> (batch, new_tokens + 1)` greedy decoder with caches."""
    parts = model.parts
    decoders = parts["decoders"]
    sampler = keras_hub.samplers.GreedySampler()

    def call_decoder(patches, token_ids, self_cache, cross_cache, index, cross_index):
        x = parts["embedding"].token_embedding(token_ids)
        x = x + parts["embedding"].position_embedding(x, start_index=index)
        self_caches, cross_caches = [], []
        for i, decoder in enumerate(decoders):
            x, next_self, next_cross = decoder(
                x, patches,
                self_attention_cache=self_cache[:, i],
                self_attention_cache_update_index=index,
                cross_attention_cache=cross_cache[:, i],
                cross_attention_cache_update_index=cross_index,
            )
            self_caches.append(next_self)
            cross_caches.append(next_cross)
        self_cache = ops.stack(self_caches, axis=1)
        if cross_index is not None:
            cross_cache = ops.stack(cross_caches, axis=1)
        return parts["head"](x), self_cache, cross_cache

    def generate(images):
        batch = ops.shape(images)[0]
        patches = parts["encoder"](images / 127.5 - 1.0)
        length = new_tokens + 1
        heads = decoders[0].num_heads
        head_dim = patches.shape[-1] // heads
        shape = (batch, len(decoders), 2, length, heads, head_dim)
        self_cache = ops.zeros(shape, dtype=patches.dtype)
        cross_cache = ops.zeros(shape[:3] + (patches.shape[1], heads, head_dim),
                                dtype=patches.dtype)
        prompt = ops.concatenate(
            [ops.full((batch, 1), start_token_id, "int32"),
             ops.zeros((batch, new_tokens), "int32")], axis=1)
        # Seed both caches with one pass, as keras-hub's seq2seq models do.
        _, self_cache, cross_cache = call_decoder(
            patches, prompt, self_cache, cross_cache, 0, 0)

        def next(prompt, cache, index):
            self_cache, cross_cache = cache
            token = ops.slice(prompt, [0, index - 1], [batch, 1])
            logits, self_cache, _ = call_decoder(
                patches, token, self_cache, cross_cache, index - 1, None)
            return logits[:, 0], None, (self_cache, cross_cache)

        # `model=` as keras-hub's own generate passes it: on JAX the sampler
        # then carries the weights through its loop instead of baking them in
        # as compile-time constants.
        return sampler(next, prompt, cache=(self_cache, cross_cache), index=1, model=model)

    return compiled_inference(generate, model.variables)
