"""How inference functions compile on each Keras backend.

`compiled_inference` (XLA on TensorFlow and JAX, `torch.export` + Inductor on
PyTorch) and the loop it traces on all three (`while_loop`). The PyTorch
path, and the private PyTorch API it needs, is `torch_export.py`.
"""

from vlm.compilation.inference import TORCH_INFERENCE_MODES
from vlm.compilation.inference import compiled_inference
from vlm.compilation.inference import torch_inference_mode
from vlm.compilation.inference import while_loop

__all__ = ["TORCH_INFERENCE_MODES", "compiled_inference", "torch_inference_mode", "while_loop"]
