"""Helpers with no `vlm` imports, so that any module may use them.

`argument_checks` (one-line errors naming the argument), `atomic_files`
(writes a kill leaves whole), `caption_text` (caption normalisation in pure
Python) and `machine` (the CPU a run is on and its measured matmul peak).
"""
