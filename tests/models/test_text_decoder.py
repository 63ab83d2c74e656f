import numpy as np
import pytest

from tests.test_case import assert_close
from tests.test_case import to_numpy
from vlm.models.text_decoder import TextDecoder


def decoder_and_inputs(**kwargs):
    rng = np.random.default_rng(0)
    decoder = TextDecoder(30, 8, 16, 3, 2, 32, **kwargs)
    tokens = rng.integers(0, 30, (2, 6)).astype("int32")
    context = rng.standard_normal((2, 9, 16)).astype("float32")
    decoder(tokens, context)
    return decoder, tokens, context


def test_focus_shift_biases_every_block_after_the_first_by_the_one_before():
    decoder, tokens, context = decoder_and_inputs(grid_size=3, focus_shift=True)
    assert [b.focus_shift is not None for b in decoder.blocks] == [False, True, True]
    before = to_numpy(decoder(tokens, context))
    rng = np.random.default_rng(1)
    for block in decoder.blocks[1:]:
        block.focus_shift.kernels.assign(rng.standard_normal(block.focus_shift.kernels.shape))
    logits, scores = decoder(tokens, context, return_attention_scores=True)
    assert np.abs(to_numpy(logits) - before).max() > 1e-3
    # Block 1 by hand: its cross attention biased by block 0's attention map.
    x = to_numpy(decoder.token_embedding(tokens)) + to_numpy(decoder.position_embedding.
                                                               position_embeddings)[:6]
    x, focus = decoder.blocks[0](x, context, return_attention_scores=True)
    _, biased = decoder.blocks[1](x, context, focus=focus, return_attention_scores=True)
    _, unbiased = decoder.blocks[1](x, context, return_attention_scores=True)
    assert_close(scores[0], focus, atol=1e-6)
    assert_close(scores[1], biased, atol=1e-6)
    assert np.abs(to_numpy(biased) - to_numpy(unbiased)).max() > 1e-3


@pytest.mark.parametrize("options", [{}, {"focus_shift": True, "position_readout": True}])
def test_cached_steps_equal_the_full_pass(options):
    decoder, tokens, context = decoder_and_inputs(grid_size=3, gated_mlp=True, **options)
    rng = np.random.default_rng(2)
    for block in decoder.blocks:
        if block.focus_shift is not None:
            block.focus_shift.kernels.assign(rng.standard_normal(block.focus_shift.kernels.shape))
        if block.position_readout is not None:
            block.position_readout.kernel.assign(
                rng.standard_normal(block.position_readout.kernel.shape))
    full = to_numpy(decoder(tokens, context))
    caches = decoder.empty_caches(2, 8)
    context_caches = decoder.compute_context_caches(context)
    steps = []
    for t in range(tokens.shape[1]):
        logits, caches = decoder.call_with_cache(tokens[:, t:t + 1], context_caches, caches, t)
        steps.append(to_numpy(logits))
    assert_close(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_config_round_trip():
    decoder, tokens, context = decoder_and_inputs(grid_size=3, focus_shift=True,
                                                  position_readout=True, gated_mlp=True)
    for block in decoder.blocks:  # zero-initialised projections would hide a wrong load
        block.position_readout.kernel.assign(
            np.random.default_rng(3).standard_normal(block.position_readout.kernel.shape))
    config = decoder.get_config()
    assert config["grid_size"] == 3 and config["gated_mlp"] and config["position_readout"]
    again = TextDecoder.from_config(config)
    again(tokens, context)
    again.set_weights(decoder.get_weights())
    assert_close(again(tokens, context), decoder(tokens, context), atol=1e-6)


def test_position_readout_adds_where_each_head_looked():
    decoder, tokens, context = decoder_and_inputs(grid_size=3, position_readout=True)
    block = decoder.blocks[0]
    kernel = np.random.default_rng(4).standard_normal(block.position_readout.kernel.shape)
    block.position_readout.kernel.assign(kernel)
    x = np.random.default_rng(5).standard_normal((2, 6, 16)).astype("float32")
    out, probs = block(x, context, return_attention_scores=True)
    probs = to_numpy(probs)  # (batch, heads, length, 9)
    cols, rows = np.meshgrid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))
    xy = np.stack([cols.ravel(), rows.ravel()], -1)  # cell (row, col) -> (x, y)
    where = np.einsum("bhtc,cd->bthd", probs, xy).reshape(2, 6, 4)
    readout = where @ kernel + to_numpy(block.position_readout.bias)
    h = x + to_numpy(block.self_attention(block.self_attention_norm(x)))
    h = h + to_numpy(block.cross_attention(block.cross_attention_norm(h), context)) + readout
    h = h + to_numpy(block.mlp_down(block.mlp_up(block.mlp_norm(h))))
    assert_close(out, h, atol=1e-4)
