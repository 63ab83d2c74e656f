"""The backend branches of vlm/backend.py, on the backend this process runs."""

import keras
import pytest

from vlm.backend import resolve_jit_compile

# "auto": XLA where Keras compiles with XLA, eager on PyTorch (no torch.compile).
AUTO = {"tensorflow": True, "jax": True, "torch": False}


def test_jit_compile_auto_is_xla_on_tensorflow_and_jax_and_eager_on_torch():
    assert resolve_jit_compile("auto") is AUTO[keras.config.backend()]
    assert resolve_jit_compile(True) is True  # torch.compile on PyTorch
    assert resolve_jit_compile(False) is False
    with pytest.raises(ValueError, match=r"^`jit_compile` must be True, False or 'auto'. "
                                         r"Received: jit_compile='xla'$"):
        resolve_jit_compile("xla")
