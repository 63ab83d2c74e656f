"""Does a captioner know left from right, and which object X is left of? Teacher-forced probes.

    python -m benchmarks.direction_probe saved_models/shapes.keras [--scenes 300 --seed 424242]

Scenes come from a seed no split uses. Direction: for each 2-object scene,
its first reference caption is scored against the same caption with the
relation's direction flipped ("left" for "right", "above" for "below").
Anchor (binding): for each 3-object scene whose first clause "X REL Y" is
false of the third object Z, the log-probability of Y's words after "X REL a"
is compared with Z's. Prints how often the true one is preferred and the
mean margin in nats: a model at chance scores about 50% and 0 nats.
"""

import argparse

import numpy as np

FLIP = {"left": "right", "right": "left", "above": "below", "below": "above"}


def token_log_probs(model, images, captions):
    """(N, T) log-probability of each caption's next tokens, teacher-forced; 0 on padding."""
    tokens, labels = (np.asarray(t) for t in model.preprocessor.tokenize(captions))
    logits = np.asarray(model({"images": images, "tokens": tokens}), "float64")
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    return picked * (labels > 0)


def caption_log_probs(model, images, captions):
    """Summed log-probability of each caption's tokens, teacher-forced."""
    return token_log_probs(model, images, captions).sum(1)


def anchor_swaps(example):
    """(caption, the caption with its first anchor named as the other object, anchor word
    positions), or None where the first clause is true of the other object too."""
    from vlm.datasets.shapes.vocabulary import dominant_relation

    words = example["captions"][0].split()
    objects = [dict(zip(("shape", "color", "size", "x", "y"), values))
               for values in zip(*(example["objects"][k] for k in
                                   ("shape", "color", "size", "x", "y")))]
    for obj in objects:
        obj["shape"], obj["color"], obj["size"] = (
            v.decode() if isinstance(v, bytes) else v for v in (obj["shape"], obj["color"],
                                                                obj["size"]))
    r = next(i for i, word in enumerate(words) if word in FLIP)
    begin = r - 2 if words[r - 2:r] == ["to", "the"] else r  # "to the left of"
    k = r + 2 if words[r] in ("left", "right") else r + 1  # the anchor's article
    triple = {(o["size"], o["color"], o["shape"]): o for o in objects}
    subject, anchor = triple[tuple(words[begin - 3:begin])], triple[tuple(words[k + 1:k + 4])]
    other = next(o for o in objects if o is not subject and o is not anchor)
    if dominant_relation(subject, other) == dominant_relation(subject, anchor):
        return None
    swapped = words[:k + 1] + [other["size"], other["color"], other["shape"]] + words[k + 4:]
    return " ".join(words), " ".join(swapped), [k + 1, k + 2, k + 3]


def flipped(caption):
    words = caption.split()
    k = next(i for i, word in enumerate(words) if word in FLIP)
    return " ".join(words[:k] + [FLIP[words[k]]] + words[k + 1:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--scenes", type=int, default=300, help="scenes drawn (1-3 objects)")
    parser.add_argument("--seed", type=int, default=424242)
    args = parser.parse_args(argv)
    from vlm import load_captioner
    from vlm.datasets.shapes.captions import generate_examples

    model = load_captioner(args.model)
    examples = list(generate_examples(args.scenes, seed=args.seed, image_size=model.image_size))
    pairs = [e for e in examples if len(e["objects"]["shape"]) == 2]
    images = np.stack([e["image"] for e in pairs]).astype("float32")
    true = caption_log_probs(model, images, [e["captions"][0] for e in pairs])
    flip = caption_log_probs(model, images, [flipped(e["captions"][0]) for e in pairs])
    print(f"{len(pairs)} two-object scenes: the true direction preferred on "
          f"{np.mean(true > flip):.1%}, mean margin {np.mean(true - flip):+.2f} nats")
    triples = [(e, anchor_swaps(e)) for e in examples if len(e["objects"]["shape"]) == 3]
    triples = [(e, swap) for e, swap in triples if swap is not None]
    images = np.stack([e["image"] for e, _ in triples]).astype("float32")
    positions = np.array([swap[2] for _, swap in triples])
    true, other = (np.take_along_axis(token_log_probs(model, images, [s[i] for _, s in triples]),
                                      positions, 1).sum(1) for i in (0, 1))
    print(f"{len(triples)} three-object scenes: the true anchor preferred on "
          f"{np.mean(true > other):.1%}, mean margin {np.mean(true - other):+.2f} nats")


if __name__ == "__main__":
    main()
