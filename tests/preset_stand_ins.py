"""Offline stand-ins for keras-hub presets: tiny models and tokenizers built from config.

The project's machines cannot download presets, so tests that exercise a
`*_preset` path patch `from_preset` to return one of these.
"""

import io

import keras_hub
import sentencepiece

TEXTS = ["a small red circle left of a large blue square",
         "question what colour is the small circle answer red",
         "there is a large green triangle above a small yellow circle"]


def gemma_tokenizer(texts=TEXTS, vocabulary_size=24, pad_id=0, unk_id=3):
    """A `GemmaTokenizer` (<pad> 0, <bos> 1, <eos> 2) with a word vocabulary of `texts`."""
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts) * 10), model_writer=proto,
        vocab_size=vocabulary_size, model_type="WORD", pad_id=pad_id, bos_id=1, eos_id=2,
        unk_id=unk_id,
        pad_piece="<pad>", bos_piece="<bos>", eos_piece="<eos>", unk_piece="<unk>",
        minloglevel=2)
    return keras_hub.models.GemmaTokenizer(proto=proto.getvalue())


def gpt2_tokenizer():
    """A `GPT2Tokenizer` of a few words; as GPT-2's, its start and end are <|endoftext|>, the
    last id, and it pads with id 0."""
    vocabulary = {"a": 0, "Ġ": 1, "r": 2, "e": 3, "d": 4, "Ġr": 5, "ed": 6, "Ġred": 7,
                  "<|endoftext|>": 8}
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary,
                                          merges=["Ġ r", "e d", "Ġr ed"])
