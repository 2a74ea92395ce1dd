"""Exceptions raised for bad user input.

Every message names the offending file, row or residue and says how to fix it.
"""


class InputError(ValueError):
    """Bad input (a file, a row, a residue, an option): the message says which and the fix."""
