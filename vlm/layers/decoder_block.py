"""One pre-LayerNorm decoder block: causal self-attention, cross attention, MLP."""

import keras

from vlm.layers.attention_utils import check_dropout
from vlm.layers.causal_self_attention import CausalSelfAttention
from vlm.layers.cross_attention import CrossAttention
from vlm.validation import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class DecoderBlock(keras.layers.Layer):
    """A text decoder block that reads an image through cross attention.

    `x + SelfAttention(LN(x))`, then `x + CrossAttention(LN(x), context)`,
    then `x + MLP(LN(x))`, each branch with dropout (pre-LayerNorm, as in
    GPT-2 and ViT).

    Args:
        num_heads: int. Attention heads, in both attentions.
        mlp_dim: int. Width of the feed-forward hidden layer.
        num_key_value_heads: int. Key/value heads of the cross attention
            (grouped-query attention when fewer than `num_heads`).
        dropout: float. Dropout on each residual branch and on attention.
        layer_norm_epsilon: float. Epsilon of the LayerNorms.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(batch, length, hidden_dim)` text states.
        context: `(batch, patches, context_dim)` image patch embeddings, or
            None with `context_cache`.
        context_cache: optional `(key, value)` from `compute_context_cache`.
        self_attention_cache: optional `(batch, 2, heads, max_length, dim)`
            self-attention cache; `cache_index` is then required.
        cache_index: position of `inputs[:, 0]` in the sequence.
        return_attention_scores: bool. Also return the cross-attention
            probabilities `(batch, heads, length, patches)`.
        training: bool.

    Returns:
        `(batch, length, hidden_dim)`; with a self-attention cache, the
        updated cache follows it, and with `return_attention_scores` the
        cross-attention scores come last.

    Example:

    >>> block = DecoderBlock(num_heads=2, mlp_dim=64)
    >>> block(keras.random.normal((2, 5, 16)), keras.random.normal((2, 9, 32))).shape
    (2, 5, 16)
    """

    def __init__(
        self,
        num_heads,
        mlp_dim,
        num_key_value_heads=None,
        dropout=0.0,
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        check_positive_int("mlp_dim", mlp_dim)
        check_dropout(dropout)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.num_key_value_heads = num_key_value_heads
        self.dropout = float(dropout)
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, inputs_shape, context_shape):
        hidden_dim = inputs_shape[-1]
        if hidden_dim % self.num_heads:
            raise ValueError(
                "`num_heads` must divide the hidden width. Received: "
                f"num_heads={self.num_heads}, hidden_dim={hidden_dim}"
            )

        def norm(name):
            layer = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, name=name, dtype=self.dtype_policy
            )
            layer.build(inputs_shape)
            return layer

        self.self_attention_norm = norm("self_attention_norm")
        self.self_attention = CausalSelfAttention(
            self.num_heads, dropout=self.dropout, name="self_attention",
            dtype=self.dtype_policy,
        )
        self.self_attention.build(inputs_shape)
        self.cross_attention_norm = norm("cross_attention_norm")
        self.cross_attention = CrossAttention(
            self.num_heads,
            num_key_value_heads=self.num_key_value_heads,
            dropout=self.dropout,
            name="cross_attention",
            dtype=self.dtype_policy,
        )
        self.cross_attention.build(inputs_shape, context_shape)
        self.mlp_norm = norm("mlp_norm")
        self.mlp_up = keras.layers.Dense(
            self.mlp_dim, activation="gelu", name="mlp_up", dtype=self.dtype_policy
        )
        self.mlp_up.build(inputs_shape)
        self.mlp_down = keras.layers.Dense(
            hidden_dim, name="mlp_down", dtype=self.dtype_policy
        )
        self.mlp_down.build(tuple(inputs_shape[:-1]) + (self.mlp_dim,))
        self.residual_dropout = keras.layers.Dropout(
            self.dropout, name="residual_dropout", dtype=self.dtype_policy
        )

    def call(
        self,
        inputs,
        context,
        context_cache=None,
        self_attention_cache=None,
        cache_index=None,
        return_attention_scores=False,
        training=None,
    ):
        x = inputs
        attended = self.self_attention(
            self.self_attention_norm(x),
            cache=self_attention_cache,
            cache_index=cache_index,
            training=training,
        )
        if self_attention_cache is not None:
            attended, self_attention_cache = attended
        x = x + self.residual_dropout(attended, training=training)
        attended = self.cross_attention(
            self.cross_attention_norm(x),
            context,
            context_cache=context_cache,
            return_attention_scores=return_attention_scores,
            training=training,
        )
        if return_attention_scores:
            attended, scores = attended
        x = x + self.residual_dropout(attended, training=training)
        hidden = self.mlp_down(self.mlp_up(self.mlp_norm(x)))
        x = x + self.residual_dropout(hidden, training=training)
        outputs = (x,)
        if self_attention_cache is not None:
            outputs += (self_attention_cache,)
        if return_attention_scores:
            outputs += (scores,)
        return outputs[0] if len(outputs) == 1 else outputs

    def compute_output_shape(self, inputs_shape, context_shape=None):
        return tuple(inputs_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
