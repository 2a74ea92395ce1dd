"""The imaging forward model: pure, batched, differentiable torch functions.

No file I/O, no global state, no knowledge of any method. Units are in the
argument names (``_A`` Å, ``_inv_A`` 1/Å, ``_kV``, ``_mm``, ``_rad``).
"""
