"""`python -m vlm ...`: command-line tools around a trained captioner.

    python -m vlm caption IMAGE... [--model PATH] [--sampler beam --beams 4]
                                   [--attention-map out.png [--layer N]]
    python -m vlm caption IMAGE... --prompt "question what colour is the circle answer"
    python -m vlm caption --together BEFORE AFTER [--model PATH]
    python -m vlm export [--model PATH] --output DIR [--sampler greedy|beam --beams N]
                         [--max-length N]
"""

import argparse
import os
import re
import sys

_SAVED_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "saved_models")
DEFAULT_MODEL = os.path.join(_SAVED_MODELS, "shapes.keras")
# The default of `caption --together`: a model that reads an image pair.
DEFAULT_PAIR_MODEL = os.path.join(_SAVED_MODELS, "shapes_change.keras")


def _caption_parser(subparsers):
    parser = subparsers.add_parser(
        "caption", help="caption image files",
        description="Prints one caption per image (JPEG, PNG, BMP or GIF). A file "
                    "that cannot be read is reported by name; the others are still "
                    "captioned, and the exit code is 1.")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--model", default=None,
                        help=f"a .keras file from train.py (default: {DEFAULT_MODEL}, or "
                             f"with --together {DEFAULT_PAIR_MODEL})")
    parser.add_argument("--together", action="store_true",
                        help="the images are one example (such as a before/after pair): "
                             "one caption for all of them, by a model that reads several")
    parser.add_argument("--prompt", default=None,
                        help="text the model continues for every image, such as a "
                             "question for a model trained on questions "
                             "(saved_models/shapes_qa_adapter.keras: \"question what "
                             "colour is the circle answer\")")
    _sampler_arguments(parser, serving_only=False)
    parser.add_argument("--max-length", type=int, default=None, help="new tokens at most")
    parser.add_argument("--attention-map", metavar="PNG",
                        help="write per-word attention heat-maps (one PNG per image; "
                             "with several images, the image's name is added)")
    parser.add_argument("--layer", type=int, default=-1,
                        help="decoder block whose attention is drawn (default: last)")
    parser.set_defaults(run=caption_command)


# Sampler flags and the constructor argument each sets; a flag left out keeps
# the sampler's own default.
SAMPLER_FLAGS = {"beams": "num_beams", "top_k": "k", "top_p": "p",
                 "temperature": "temperature", "seed": "seed"}


def _sampler_arguments(parser, serving_only):
    kinds = "greedy or beam" if serving_only else "greedy, beam, top_k or top_p"
    parser.add_argument("--sampler", default="greedy",
                        help=f"decoding strategy: {kinds} (default: %(default)s)")
    parser.add_argument("--beams", type=int, help="beams for --sampler beam")
    if not serving_only:
        parser.add_argument("--top-k", type=int, help="candidates for --sampler top_k")
        parser.add_argument("--top-p", type=float, help="probability mass for --sampler top_p")
        parser.add_argument("--temperature", type=float, help="for top_k and top_p")
        parser.add_argument("--seed", type=int, help="sampling seed for top_k and top_p")


def sampler_from_args(args):
    """The `Sampler` the flags ask for; a flag that does not apply is an error."""
    from vlm import samplers  # imports Keras: not before a command needs it

    if args.sampler not in samplers.ALIASES:
        raise ValueError(f"--sampler must be one of {', '.join(samplers.ALIASES)}. "
                         f"Received: {args.sampler!r}")
    cls = samplers.ALIASES[args.sampler]
    takes = cls().get_config()
    given = {}
    for flag, argument in SAMPLER_FLAGS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if argument not in takes:
            raise ValueError(f"--{flag.replace('_', '-')} does not apply to --sampler "
                             f"{args.sampler}")
        given[argument] = value
    return cls(**given)


def read_images(paths):
    """Decodes image files; returns `(images, errors)`, lists of `(path, ...)` pairs.

    `images` holds `(path, pixels)` in the order given, a path named twice
    twice. Every problem (missing, empty, not an image, truncated, over the
    pixel limit) becomes a `(path, message)` error naming the file; the
    other files are still read. The header is checked before decoding, so a
    decompression bomb is refused without decoding it.
    """
    from vlm.data.images import ImageError
    from vlm.data.images import ImageTooLargeError
    from vlm.data.images import decode_image
    from vlm.data.images import read_image_header

    images, errors = [], []
    for path in paths:
        if not os.path.isfile(path):
            errors.append((path, "no such file"))
            continue
        with open(path, "rb") as f:
            contents = f.read()
        if not contents:
            errors.append((path, "empty file"))
            continue
        try:
            read_image_header(contents)
        except ImageTooLargeError as error:
            errors.append((path, f"refused: {error}"))
            continue
        except ImageError as error:
            errors.append((path, f"not a readable image ({error})"))
            continue
        try:
            images.append((path, decode_image(contents).numpy()))
        except Exception as error:  # noqa: BLE001  (TF raises several kinds)
            errors.append((path, f"not a readable image ({_short_tf_message(error)})"))
    return images, errors


def _short_tf_message(error):
    """The readable part of a TensorFlow op error (no `{{function_node}}`/`[Op:]`)."""
    message = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]", "", str(error))
    return " ".join(message.split()) or type(error).__name__


def caption_command(args):
    if args.model is None:
        args.model = DEFAULT_PAIR_MODEL if args.together else DEFAULT_MODEL
    if args.together and args.attention_map:
        print("error: --attention-map draws one image per caption; it does not go with "
              "--together", file=sys.stderr)
        return 2
    if not os.path.exists(args.model):
        print(f"error: model file not found: {args.model}", file=sys.stderr)
        return 2
    try:
        sampler = sampler_from_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    images, errors = read_images(args.images)
    for path, message in errors:
        print(f"error: {path}: {message}", file=sys.stderr)
    if (args.together and errors) or not images:
        return 1
    from vlm import load_captioner

    try:
        model = load_captioner(args.model)
        _check_image_count(model, args, len(images))
        paths = [path for path, _ in images]
        if args.together:
            examples = [[pixels for _, pixels in images]]
            paths = [" + ".join(paths)]
        elif model.images_per_example is not None:
            examples = [[pixels] for _, pixels in images]
        else:
            examples = [pixels for _, pixels in images]
        details = model.generate(examples, sampler=sampler, max_length=args.max_length,
                                 return_details=True, prompts=args.prompt)
    except ValueError as error:  # not a .keras file, one carrying code, a bad prompt...
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path, caption in zip(paths, details["captions"]):
        print(f"{path}\t{caption}")
    if args.attention_map:  # drawn over the images as the model read them
        _write_attention_maps(model, paths, details["images"], details, args)
    return 1 if errors else 0


def _check_image_count(model, args, count):
    """Refuses, in one line, images a model does not read as they are given."""
    if model.images_per_example is None:
        if args.together:
            raise ValueError(f"{args.model} reads one image per caption; --together needs a "
                             f"model that reads several, such as {DEFAULT_PAIR_MODEL}")
        return
    least, most = model.preprocessor.image_counts  # what it was trained on
    takes = f"{most}" if least == most else f"{least} to {most}"
    if args.together and not least <= count <= most:
        raise ValueError(f"{args.model} reads {takes} images per example; "
                         f"--together got {count}")
    if not args.together and least > 1:
        raise ValueError(f"{args.model} reads {takes} images per example: give "
                         f"them with --together")


def _write_attention_maps(model, paths, pixels, details, args):
    import keras

    from vlm.viz.attention import plot_attention_grid
    from vlm.viz.attention import word_attention

    root, extension = os.path.splitext(args.attention_map)
    for i, path in enumerate(paths):
        out = args.attention_map
        if len(paths) > 1:
            out = f"{root}_{os.path.splitext(os.path.basename(path))[0]}{extension or '.png'}"
        image = keras.ops.convert_to_numpy(pixels[i])
        words, maps = word_attention(model, image, details["token_ids"][i], layer=args.layer)
        plot_attention_grid(image, words, maps, out, caption=details["captions"][i])
        print(f"attention map: {out}", file=sys.stderr)


def _export_parser(subparsers):
    parser = subparsers.add_parser(
        "export", help="export a TF SavedModel that captions image bytes",
        description="Writes a TF SavedModel with `serving_default` (encoded image "
                    "bytes -> captions, log_probs) and `serve_pixels` (float images). "
                    "Runs under the TensorFlow backend, in a subprocess if needed.")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="default: %(default)s")
    parser.add_argument("--output", required=True, help="SavedModel folder to write")
    _sampler_arguments(parser, serving_only=True)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--no-xla", dest="xla", action="store_false",
                        help="do not XLA-compile the decoding loop (for TF runtimes "
                             "built without XLA)")
    parser.set_defaults(run=export_command)


def export_command(args):
    if not os.path.exists(args.model):
        print(f"error: model file not found: {args.model}", file=sys.stderr)
        return 2
    from vlm.export.saved_model import export
    from vlm.saving import check_keras_file

    try:
        sampler = sampler_from_args(args)
        check_keras_file(args.model)  # before a TensorFlow subprocess is started
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    export(args.model, args.output, sampler=sampler, max_length=args.max_length,
           xla=args.xla)
    print(f"SavedModel: {args.output}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m vlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _caption_parser(subparsers)
    _export_parser(subparsers)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)
