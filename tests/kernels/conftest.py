"""Kernel tests run the Triton kernels in the interpreter, on CPU tensors.

The variable must be set before triton decorates any kernel (``triton.jit`` reads it then), so it
is set here, at conftest import, before any test module imports ``fastviz.kernels``.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"
