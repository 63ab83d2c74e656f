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
    decoder, tokens, context = decoder_and_inputs(focus_grid=3)
    assert [b.focus_grid for b in decoder.blocks] == [None, 3, 3]
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


@pytest.mark.parametrize("focus_grid", [None, 3])
def test_cached_steps_equal_the_full_pass(focus_grid):
    decoder, tokens, context = decoder_and_inputs(focus_grid=focus_grid, gated_mlp=True)
    for block in decoder.blocks[1:]:
        if block.focus_shift is not None:
            block.focus_shift.kernels.assign(
                np.random.default_rng(2).standard_normal(block.focus_shift.kernels.shape))
    full = to_numpy(decoder(tokens, context))
    caches = decoder.empty_caches(2, 8)
    context_caches = decoder.compute_context_caches(context)
    steps = []
    for t in range(tokens.shape[1]):
        logits, caches = decoder.call_with_cache(tokens[:, t:t + 1], context_caches, caches, t)
        steps.append(to_numpy(logits))
    assert_close(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_config_round_trip():
    decoder, tokens, context = decoder_and_inputs(focus_grid=3, gated_mlp=True)
    config = decoder.get_config()
    assert config["focus_grid"] == 3 and config["gated_mlp"] is True
    again = TextDecoder.from_config(config)
    again(tokens, context)
    again.set_weights(decoder.get_weights())
    assert_close(again(tokens, context), decoder(tokens, context), atol=1e-6)
