"""PyTorch's compiled decoding (`vlm.compilation.compiled_inference`) against its eager loop.

The rest of the suite decodes eagerly on PyTorch (`tests/conftest.py`); here
the traced graph, with and without Inductor, must give the eager loop's
tokens exactly and its log-probabilities to 1e-4, be traced once per input
signature across `generate` calls, and read the weights as they are now.
"""

import logging
import warnings

import keras
import numpy as np
import pytest

from tests.generation.test_generator import MODEL
from tests.generation.test_generator import golden_images
from tests.models import test_multi_image_captioner as multi_image
from tests.models import test_vision_language_model as vlm_models
from vlm import load_captioner
from vlm.compilation.torch_export import ExportedFunction
from vlm.samplers import BeamSampler
from vlm.samplers import TopKSampler

pytestmark = pytest.mark.skipif(keras.config.backend() != "torch",
                                reason="PyTorch's compiled decoding")


def decode(monkeypatch, mode, model_fn, *args, **kwargs):
    """`model_fn().generate(*args, **kwargs)` with `VLM_TORCH_INFERENCE=mode`, a fresh model."""
    monkeypatch.setenv("VLM_TORCH_INFERENCE", mode)
    model = model_fn()
    return model, model.generate(*args, return_details=True, **kwargs)


def assert_same_decoding(actual, expected):
    np.testing.assert_array_equal(actual["token_ids"], expected["token_ids"])
    assert actual["captions"] == expected["captions"]
    np.testing.assert_allclose(actual["log_probs"], expected["log_probs"], atol=1e-4)


# Where a recompile or a failed compile would be reported. Other libraries log at
# DEBUG through these hooks (torch's structured trace log does), which says nothing.
WATCHED_LOGGERS = ("torch._dynamo", "torch._inductor", "torch.export", "vlm")


def problems_logged(records):
    """The records at WARNING or above from the loggers that report recompiles."""
    return [f"{r.name}: {r.getMessage()}" for r in records
            if r.levelno >= logging.WARNING and r.name.startswith(WATCHED_LOGGERS)]


def count_traces(monkeypatch, model):
    """A list that grows by one each time `model.generate_step` runs (only while tracing)."""
    calls = []
    original = type(model).generate_step
    monkeypatch.setattr(type(model), "generate_step",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    return calls


@pytest.mark.slow
def test_inductor_decoding_equals_eager_and_compiles_once(monkeypatch, caplog):
    import torch

    # Sampling: the noise is an input of the loop, the model's log-probs are
    # perturbed by it, and the argmax picks (greedy is the same graph less the noise).
    images = golden_images(4)
    sampler = TopKSampler(temperature=1.5, seed=3)
    _, eager = decode(monkeypatch, "eager", lambda: load_captioner(MODEL), images,
                      sampler=sampler)
    model, compiled = decode(monkeypatch, "compiled", lambda: load_captioner(MODEL), images,
                             sampler=sampler)
    assert_same_decoding(compiled, eager)
    assert len(set(map(tuple, eager["token_ids"]))) > 1  # not one caption for all
    # Repeated calls, other images and other seeds reuse the graph: no trace,
    # no Dynamo recompile, no warning (Dynamo's are logged).
    traces = count_traces(monkeypatch, model)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        for seed in (3, 4, 5):
            sampler = TopKSampler(temperature=1.5, seed=seed)
            again = model.generate(golden_images(8)[4:], sampler=sampler, return_details=True)
    assert traces == [] and torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert [str(w.message) for w in caught] == []
    assert problems_logged(caplog.records) == []
    assert again["token_ids"].shape == (4, model.sequence_length - 1)
    (function,) = [f for key, f in model._generate_functions.items()
                   if key[0][0] == "TopKSampler"]
    assert isinstance(function, ExportedFunction) and len(function.graphs) == 1


def test_the_log_check_sees_a_recompile_warning_and_not_debug_chatter():
    def record(name, level):
        return logging.LogRecord(name, level, __file__, 1, "recompiling", None, None)

    assert problems_logged([record("torch.__trace", logging.DEBUG),
                            record("torch._dynamo.convert_frame", logging.DEBUG),
                            record("keras", logging.WARNING)]) == []
    assert problems_logged([record("torch._dynamo.convert_frame", logging.WARNING)]) == [
        "torch._dynamo.convert_frame: recompiling"]


def test_exported_beam_search_equals_eager_and_a_new_batch_size_traces_once_more(monkeypatch):
    images = golden_images(3)
    _, eager = decode(monkeypatch, "eager", lambda: load_captioner(MODEL), images,
                      sampler=BeamSampler(num_beams=3))
    model, exported = decode(monkeypatch, "exported", lambda: load_captioner(MODEL), images,
                             sampler=BeamSampler(num_beams=3))
    assert_same_decoding(exported, eager)
    traces = count_traces(monkeypatch, model)
    model.generate(images, sampler=BeamSampler(num_beams=3))
    model.generate(images[:2], sampler=BeamSampler(num_beams=3))
    assert len(traces) == 1  # batch 3 reused, batch 2 traced


def test_the_traced_loop_reads_the_weights_as_they_are_now(monkeypatch):
    monkeypatch.setenv("VLM_TORCH_INFERENCE", "exported")
    model = load_captioner(MODEL)
    images = golden_images(2)
    before = model.generate(images, return_details=True)
    embeddings = model.backbone.decoder.token_embedding.embeddings
    embeddings.assign(np.asarray(embeddings) * 1.5)  # sharper logits, other log-probs
    after = model.generate(images, return_details=True)
    monkeypatch.setenv("VLM_TORCH_INFERENCE", "eager")
    model._generate_functions = None
    assert_same_decoding(after, model.generate(images, return_details=True))
    assert np.abs(after["log_probs"] - before["log_probs"]).max() > 1e-3


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_language_model_with_adapters_decodes_prompts_as_eagerly(monkeypatch, kind):
    tokenizer = vlm_models.make_tokenizer()
    images = (np.random.default_rng(0).random((3, 16, 16, 3)) * 255).astype("float32")
    # Two prompt lengths: two groups, each traced once.
    prompts = ["question what colour", "a small", "question is there"]
    runs = [decode(monkeypatch, mode, lambda: vlm_models.make_model(tokenizer, kind), images,
                   prompts=prompts, sampler="greedy" if kind == "gpt2" else "beam",
                   max_length=4)[1] for mode in ("eager", "exported")]
    assert_same_decoding(runs[1], runs[0])


def test_interleaved_images_decode_as_eagerly(monkeypatch):
    def fresh():
        multi_image.model.cache_clear()
        return multi_image.model(2, "interleaved")

    runs = [decode(monkeypatch, mode, fresh, multi_image.images(2, 2), sampler="beam",
                   max_length=5)[1] for mode in ("eager", "exported")]
    assert_same_decoding(runs[1], runs[0])


def test_a_failed_compile_warns_once_and_decodes_with_the_exported_graph(monkeypatch):
    import torch

    def failing_compile(*args, **kwargs):
        def compiled(*args, **kwargs):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    images = golden_images(2)
    _, eager = decode(monkeypatch, "eager", lambda: load_captioner(MODEL), images)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler.*VLM_TORCH_INFERENCE=exported"):
        model, fallback = decode(monkeypatch, "compiled", lambda: load_captioner(MODEL), images)
    assert_same_decoding(fallback, eager)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.generate(images)  # the fallback is kept: no second attempt, no warning


def test_an_unknown_inference_mode_is_an_error(monkeypatch):
    monkeypatch.setenv("VLM_TORCH_INFERENCE", "jit")
    with pytest.raises(ValueError, match="VLM_TORCH_INFERENCE must be one of.*'jit'"):
        load_captioner(MODEL).generate(golden_images(1))
