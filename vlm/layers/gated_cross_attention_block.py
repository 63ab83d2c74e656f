"""Flamingo's gated cross-attention block: a new image reader inside a frozen language model."""

import keras

from vlm.layers.attention_utils import check_dropout
from vlm.layers.cross_attention import CrossAttention
from vlm.layers.cross_attention import check_gate
from vlm.layers.cross_attention import gate_shape
from vlm.layers.cross_attention import tanh_gate
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class GatedCrossAttentionBlock(keras.layers.Layer):
    """Cross attention then a feed-forward layer, each behind a tanh gate that starts at 0.

    `x + tanh(s * a) * CrossAttention(LN(x), context)`, then
    `x + tanh(s * f) * MLP(LN(x))`, with the gates `a` and `f` initialised
    at 0 (Flamingo's `GatedCrossAttentionBlock`; Llama 3.2 Vision's
    cross-attention layers have the same two gates). Inserted between the
    layers of a pretrained language model, the block is an exact identity
    until training moves its gates, so the model starts as the bare language
    model.

    Args:
        num_heads: int. Query heads of the cross attention.
        mlp_dim: int. Width of the feed-forward hidden layer.
        num_key_value_heads: int. Key/value heads (grouped-query attention
            when fewer than `num_heads`); defaults to `num_heads`.
        dropout: float. Dropout on attention and on each branch.
        layer_norm_epsilon: float.
        gate_type: str. "scalar" (the gates `a` and `f` are one number each)
            or "vector" (one per hidden channel, shape `(hidden_dim,)`, as
            IDEFICS' `alpha_type="vector"`).
        gate_scale: float. `s`, the gates' multiplier inside the tanh: with
            Adam, a learning-rate multiplier for the gates alone. Positive.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(batch, length, hidden_dim)` language model states.
        context: `(batch, patches, context_dim)` image embeddings, or None
            with `context_cache`.
        context_cache: optional `(key, value)` from `compute_context_cache`.
        attention_mask: optional boolean `(batch, length, patches)`.
        training: bool.

    Returns:
        `(batch, length, hidden_dim)`.

    Example:

    >>> block = GatedCrossAttentionBlock(num_heads=2, mlp_dim=32)
    >>> x = keras.random.normal((2, 5, 16))
    >>> bool(keras.ops.all(block(x, keras.random.normal((2, 9, 8))) == x))  # gates at 0
    True
    """

    def __init__(self, num_heads, mlp_dim, num_key_value_heads=None, dropout=0.0,
                 layer_norm_epsilon=1e-5, gate_type="scalar", gate_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.mlp_dim = check_positive_int("mlp_dim", mlp_dim)
        self.num_key_value_heads = num_key_value_heads
        check_dropout(dropout)
        self.dropout = float(dropout)
        self.layer_norm_epsilon = layer_norm_epsilon
        check_gate(gate_type, gate_scale)
        self.gate_type = gate_type
        self.gate_scale = float(gate_scale)

    def build(self, inputs_shape, context_shape):
        hidden_dim = inputs_shape[-1]
        if hidden_dim % self.num_heads:
            raise ValueError(
                "`num_heads` must divide the hidden width. Received: "
                f"num_heads={self.num_heads}, hidden_dim={hidden_dim}")
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="attention_norm", dtype=self.dtype_policy)
        self.attention_norm.build(inputs_shape)
        self.cross_attention = CrossAttention(
            self.num_heads, num_key_value_heads=self.num_key_value_heads,
            dropout=self.dropout, gated=True, gate_type=self.gate_type,
            gate_scale=self.gate_scale, name="cross_attention",
            dtype=self.dtype_policy)
        self.cross_attention.build(inputs_shape, context_shape)
        self.mlp_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="mlp_norm", dtype=self.dtype_policy)
        self.mlp_norm.build(inputs_shape)
        self.mlp_up = keras.layers.Dense(
            self.mlp_dim, activation="gelu", name="mlp_up", dtype=self.dtype_policy)
        self.mlp_up.build(inputs_shape)
        self.mlp_down = keras.layers.Dense(hidden_dim, name="mlp_down", dtype=self.dtype_policy)
        self.mlp_down.build(tuple(inputs_shape[:-1]) + (self.mlp_dim,))
        self.mlp_gate = self.add_weight(
            name="mlp_gate", shape=gate_shape(self.gate_type, hidden_dim), initializer="zeros")
        self.residual_dropout = keras.layers.Dropout(
            self.dropout, name="residual_dropout", dtype=self.dtype_policy)

    def compute_context_cache(self, context):
        """The cross attention's `(key, value)` of `context`, computed once per image."""
        return self.cross_attention.compute_context_cache(context)

    def call(self, inputs, context, context_cache=None, attention_mask=None, training=None):
        x = inputs
        attended = self.cross_attention(  # tanh(gate) is applied inside
            self.attention_norm(x), context, context_cache=context_cache,
            attention_mask=attention_mask, training=training)
        x = x + self.residual_dropout(attended, training=training)
        hidden = self.mlp_down(self.mlp_up(self.mlp_norm(x)))
        gate = tanh_gate(self.mlp_gate, self.gate_scale, hidden.dtype)
        return x + self.residual_dropout(gate * hidden, training=training)

    def compute_output_shape(self, inputs_shape, context_shape=None):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "num_key_value_heads": self.num_key_value_heads,
            "dropout": self.dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "gate_type": self.gate_type,
            "gate_scale": self.gate_scale,
        })
        return config
