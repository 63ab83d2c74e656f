"""A keras-hub causal language model with gated cross-attention blocks between its layers."""

import keras
from keras import ops

from vlm.layers.cross_attention import check_gate
from vlm.layers.gated_cross_attention_block import GatedCrossAttentionBlock
from vlm.models.text_decoder import positions_from
from vlm.utils.argument_checks import check_positive_int


class _Family:
    """How one keras-hub backbone family embeds tokens and calls a layer, cached or not."""

    query_heads = "num_query_heads"

    def embed(self, backbone, tokens, start_index, training):
        return backbone.token_embedding(tokens)

    def cache_heads_and_dim(self, backbone):
        heads = backbone.num_key_value_heads
        return heads, backbone.hidden_dim // getattr(backbone, self.query_heads)

    def layer(self, layer, x, cache, index, training):
        if cache is None:
            return layer(x, training=training)
        return layer(x, self_attention_cache=cache, self_attention_cache_update_index=index,
                     training=training)


class _GPT2(_Family):
    query_heads = "num_heads"

    def embed(self, backbone, tokens, start_index, training):
        x = backbone.token_embedding(tokens)
        positions = backbone.position_embedding(
            x, start_index=start_index, positions=positions_from(start_index, tokens))
        return backbone.embeddings_dropout(backbone.embeddings_add((x, positions)),
                                           training=training)

    def cache_heads_and_dim(self, backbone):
        return backbone.num_heads, backbone.hidden_dim // backbone.num_heads


class _Gemma(_Family):
    def embed(self, backbone, tokens, start_index, training):
        x = backbone.token_embedding(tokens)
        return x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)

    def cache_heads_and_dim(self, backbone):
        return backbone.num_key_value_heads, backbone.head_dim

    def layer(self, layer, x, cache, index, training):
        if cache is None:
            return layer(x, training=training)
        return layer(x, cache=cache, cache_update_index=index, training=training)


# keras-hub backbone class name -> how to run it. Each runs as its CausalLM's
# `call_with_cache` does.
FAMILIES = {"GPT2Backbone": _GPT2(), "GemmaBackbone": _Gemma(), "LlamaBackbone": _Family()}
_LAYERS = ("token_embedding", "transformer_layers", "layer_norm")


def _family_of(backbone):
    name = type(backbone).__name__
    if name not in FAMILIES:
        raise ValueError(f"`language_model` must be a keras-hub backbone of "
                         f"{sorted(FAMILIES)}. Received: {name}")
    missing = [attr for attr in _LAYERS if not hasattr(backbone, attr)]
    if missing:
        raise ValueError(f"`language_model` ({name}) lacks the layers {missing} a "
                         f"{name} has. Received: {backbone!r}")
    return FAMILIES[name]


def cross_attention_positions(num_layers, every=None, layers=None):
    """The LM layer indices a gated block goes before, sorted.

    `every=n` puts one before every n-th layer, counting from the n-th
    (open_flamingo's `cross_attn_every_n_layers`: layers n-1, 2n-1, ...;
    with n > 1 none sits before the first layer, which starts training at a
    much higher loss). `layers` names the indices.
    """
    if (every is None) == (layers is None):
        raise ValueError("Pass exactly one of `cross_attention_every` and "
                         f"`cross_attention_layers`. Received: cross_attention_every={every!r}, "
                         f"cross_attention_layers={layers!r}")
    if every is not None:
        check_positive_int("cross_attention_every", every)
        return tuple(range(every - 1, num_layers, every))
    layers = tuple(int(i) for i in layers)
    if not layers or len(set(layers)) != len(layers) or not all(
            0 <= i < num_layers for i in layers):
        raise ValueError(f"`cross_attention_layers` must be distinct indices in [0, "
                         f"{num_layers}) (the language model's layers). Received: "
                         f"cross_attention_layers={list(layers)}")
    return tuple(sorted(layers))


@keras.saving.register_keras_serializable(package="vlm")
class CrossAttentionLanguageModel(keras.layers.Layer):
    """A keras-hub causal LM that reads an image through inserted gated cross attention.

    The backbone's own layers run as its `CausalLM` runs them (token
    embedding, transformer layers, final norm, reversed embedding for the
    logits); before each chosen layer a `GatedCrossAttentionBlock` reads the
    image. The backbone's weights are used in place, not copied. With the
    gates at 0 (as built) the logits are the bare language model's.

    The call signature and decoding methods are `TextDecoder`'s, so a
    `Captioner` (and its compiled generation loop) can drive it.

    Args:
        backbone: a keras-hub `GPT2Backbone`, `GemmaBackbone` or
            `LlamaBackbone` (built from a config, or `from_preset` with
            internet).
        cross_attention_every: int n: a block before every n-th layer.
        cross_attention_layers: list of layer indices instead.
        num_heads: int. Query heads of the blocks (default: the LM's).
        num_key_value_heads: int. Key/value heads (grouped-query attention).
        mlp_dim: int. Feed-forward width of the blocks (default 4x hidden).
        dropout: float. Dropout in the blocks.
        gate_type: str. "scalar" or "vector" tanh gates in the blocks
            (`GatedCrossAttentionBlock`).
        gate_scale: float. The blocks' gate multiplier inside the tanh (with
            Adam, the gates' learning-rate multiplier).
        sequence_length: int. Longest token sequence, the cache size
            (default: GPT-2's `max_sequence_length`; required for the
            rotary-position families).
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        tokens: int `(batch, length)`.
        context: `(batch, patches, dim)` image embeddings, or None with
            `context_caches`.
        context_caches: optional list, per block, of `(key, value)`.
        attention_mask: optional boolean `(batch, length, patches)`.
        self_attention_caches: optional list of per-layer keras-hub caches
            `(batch, 2, max_length, kv_heads, head_dim)`; `cache_index` then
            required.
        cache_index: position of `tokens[:, 0]`.
        training: bool.

    Returns:
        float32 logits `(batch, length, vocabulary_size)`, and the updated
        caches when given caches.
    """

    def __init__(self, backbone, cross_attention_every=None, cross_attention_layers=None,
                 num_heads=None, num_key_value_heads=None, mlp_dim=None, dropout=0.0,
                 sequence_length=None, gate_type="scalar", gate_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        self.family = _family_of(backbone)
        self.backbone = backbone
        self.num_layers = len(backbone.transformer_layers)
        self.positions = cross_attention_positions(
            self.num_layers, cross_attention_every, cross_attention_layers)
        self.cross_attention_every = cross_attention_every
        self.cross_attention_layers = (None if cross_attention_layers is None
                                       else list(self.positions))
        self.hidden_dim = backbone.hidden_dim
        self.num_heads = num_heads or getattr(backbone, self.family.query_heads)
        self.num_key_value_heads = num_key_value_heads
        self.mlp_dim = mlp_dim or 4 * self.hidden_dim
        self.dropout = float(dropout)
        check_gate(gate_type, gate_scale)
        self.gate_type = gate_type
        self.gate_scale = float(gate_scale)
        sequence_length = sequence_length or getattr(backbone, "max_sequence_length", None)
        if sequence_length is None:
            raise ValueError(f"`sequence_length` is required for a {type(backbone).__name__} "
                             "(rotary positions have no table size). Received: None")
        self.sequence_length = check_positive_int("sequence_length", sequence_length)
        self.vocabulary_size = backbone.vocabulary_size
        self.blocks = [
            GatedCrossAttentionBlock(
                self.num_heads, self.mlp_dim, num_key_value_heads=num_key_value_heads,
                dropout=dropout, gate_type=gate_type, gate_scale=gate_scale,
                name=f"gated_cross_attention_{i}", dtype=self.dtype_policy)
            for i in self.positions
        ]
        self._block_at = {position: k for k, position in enumerate(self.positions)}

    def build(self, tokens_shape, context_shape):
        states_shape = tuple(tokens_shape) + (self.hidden_dim,)
        for block in self.blocks:
            block.build(states_shape, context_shape)

    def compute_context_caches(self, context):
        """Every block's cross-attention `(key, value)`, computed once per image."""
        return [block.compute_context_cache(context) for block in self.blocks]

    def empty_caches(self, batch, max_length):
        """Zero keras-hub self-attention caches, `(batch, 2, max_length, heads, dim)` per layer."""
        heads, dim = self.family.cache_heads_and_dim(self.backbone)
        shape = (batch, 2, max_length, heads, dim)
        return [ops.zeros(shape, self.backbone.compute_dtype) for _ in range(self.num_layers)]

    def call_with_cache(self, tokens, context_caches, self_attention_caches, cache_index,
                        attention_mask=None):
        """One cached step from position `cache_index` (as `TextDecoder.call_with_cache`)."""
        return self(tokens, None, context_caches=context_caches, attention_mask=attention_mask,
                    self_attention_caches=self_attention_caches, cache_index=cache_index,
                    training=False)

    def call(self, tokens, context, context_caches=None, attention_mask=None,
             self_attention_caches=None, cache_index=None, training=None):
        backbone = self.backbone
        start = 0 if cache_index is None else cache_index
        x = self.family.embed(backbone, tokens, start, training)
        caches = []
        for i, layer in enumerate(backbone.transformer_layers):
            k = self._block_at.get(i)
            if k is not None:  # a gated block reads the image before layer i
                x = self.blocks[k](x, context,
                          context_cache=None if context_caches is None else context_caches[k],
                          attention_mask=attention_mask, training=training)
            cache = None if self_attention_caches is None else self_attention_caches[i]
            x = self.family.layer(layer, x, cache, cache_index, training)
            if cache is not None:
                x, cache = x
                caches.append(cache)
        x = backbone.layer_norm(x)
        logits = ops.cast(backbone.token_embedding(x, reverse=True), "float32")
        return logits if self_attention_caches is None else (logits, caches)

    def compute_output_shape(self, tokens_shape, context_shape=None):
        return tuple(tokens_shape) + (self.vocabulary_size,)

    def get_config(self):
        config = super().get_config()
        config.update({
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "cross_attention_every": self.cross_attention_every,
            "cross_attention_layers": self.cross_attention_layers,
            "num_heads": self.num_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
            "sequence_length": self.sequence_length,
            "gate_type": self.gate_type,
            "gate_scale": self.gate_scale,
        })
        return config
