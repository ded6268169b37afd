"""Triton kernels of fastviz, installed as ``fastviz.kernels``.

Each module holds ``@triton.jit`` kernels and their launcher; the plain torch reference of each
lives in the package proper (for ``yosinski``: ``fastviz.regularizers.regularize_reference``).
Nothing is imported here, so importing the package never imports triton.
"""
