"""Prompted decoding of a `VisionLanguageModel` against keras-hub's `CausalLM.generate`.

    python -m benchmarks.adapter --output benchmarks/results/cpu_adapter_<backend>_<date>.json

One process, one backbone: a GPT-2 of the shapes QA adapter's sizes (or
`--model`, a trained `.keras` adapter model) decodes at batch 1 after a
prompt of `--prompt-tokens` tokens, `--new-tokens` new tokens, greedy,
through (a) `VisionLanguageModel.generate` (image encoded once, the gated
blocks' image keys and values once, compiled loop) and (b) keras-hub's
`GPT2CausalLM.generate` on the same backbone (text only, so it does less
work per token). Each is timed after a warm-up call, best of `--repeats`,
for one new token and for `--new-tokens`: the difference is the cost per
extra token, the one-token call the fixed cost. `speedup_*` are (b) / (a).
"""

import argparse
import json
import sys
import time

from benchmarks.report import markdown
from vlm.utils.machine import machine
from vlm.utils.machine import matmul_peak_gflops


def best_of(fn, repeats):
    fn()  # compiles
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def build_model(path):
    """The trained adapter model at `path`, or one of its config's sizes (random weights)."""
    import keras

    if path:
        from vlm import load_captioner

        return load_captioner(path)
    from configs.shapes_qa_adapter import get_config
    from vlm.data.tokenizer import train_tokenizer
    from vlm.models.vision_language_model import build_language_model
    from vlm.models.vision_language_model import build_vision_language_model

    model_config = get_config().model
    model_config.encoder_from = None
    words = ["question what colour is the small circle answer red"] * 20
    tokenizer = train_tokenizer(words, 60)
    language_model = build_language_model(model_config, tokenizer.vocabulary_size())
    model = build_vision_language_model(model_config, tokenizer, language_model)
    for block in model.backbone.decoder.blocks:  # open, as after training
        block.cross_attention.gate.assign(0.5)
        block.mlp_gate.assign(0.5)
    keras.utils.set_random_seed(0)
    return model


def measure(model, prompt_tokens, new_tokens, repeats):
    """Seconds per call of both decoders at batch 1, for 1 and `new_tokens` new tokens.

    The difference over `new_tokens - 1` is the cost of one more token (the
    loop's step); the one-token call is the fixed cost (image, prompt,
    compiled-function dispatch, detokenizing).
    """
    import keras
    import keras_hub
    import numpy as np

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, model.image_size, model.image_size, 3)).astype("uint8")
    words = [w for w in model.tokenizer.get_vocabulary()[5:] if not w.startswith("##")]
    prompt = " ".join(rng.choice(words, prompt_tokens))
    prompt_ids = model.preprocessor.prompt_ids([prompt])[0]
    assert len(prompt_ids) == prompt_tokens
    causal_lm = keras_hub.models.GPT2CausalLM(backbone=model.language_model, preprocessor=None)
    causal_lm.compile(sampler="greedy")

    def ours(count):
        return lambda: model.generate(image, prompt, max_length=count)

    def keras_hub_generate(count):
        length = prompt_tokens + 1 + count
        ids = np.zeros((1, length), "int32")
        ids[0, :prompt_tokens + 1] = list(prompt_ids) + [model.tokenizer.start_token_id]
        mask = np.arange(length)[None] <= prompt_tokens
        return lambda: causal_lm.generate({"token_ids": ids, "padding_mask": mask},
                                          stop_token_ids=None)

    details = model.generate(image, prompt, max_length=new_tokens, return_details=True)
    generated = int(np.sum(details["token_ids"] != model.tokenizer.pad_token_id))
    if generated != new_tokens:
        raise RuntimeError(f"The model stopped after {generated} of {new_tokens} tokens: "
                           "per-token figures would be wrong; try another --prompt-tokens.")
    row = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
           "backend": keras.config.backend()}
    for name, make in [("vlm", ours), ("keras_hub", keras_hub_generate)]:
        one, many = best_of(make(1), repeats), best_of(make(new_tokens), repeats)
        row[f"{name}_ms_per_call_1_token"] = round(one * 1000, 2)
        row[f"{name}_ms_per_call_{new_tokens}_tokens"] = round(many * 1000, 2)
        row[f"{name}_ms_per_extra_token"] = round((many - one) / (new_tokens - 1) * 1000, 3)
    row["speedup_per_extra_token"] = round(
        row["keras_hub_ms_per_extra_token"] / row["vlm_ms_per_extra_token"], 2)
    row["speedup_per_call"] = round(row[f"keras_hub_ms_per_call_{new_tokens}_tokens"]
                                    / row[f"vlm_ms_per_call_{new_tokens}_tokens"], 2)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adapter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a trained adapter .keras (default: config sizes)")
    parser.add_argument("--prompt-tokens", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="results JSON to write")
    args = parser.parse_args(argv)
    model = build_model(args.model)
    results = {"command": "python -m benchmarks.adapter " + " ".join(argv or sys.argv[1:]),
               "machine": dict(machine(), matmul_peak_gflops=round(matmul_peak_gflops(), 1)),
               "date": time.strftime("%Y-%m-%d"),
               "decoding": {"batch_1": measure(model, args.prompt_tokens, args.new_tokens,
                                               args.repeats)}}
    print(markdown(results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
