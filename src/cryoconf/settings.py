"""Building a settings dataclass from a mapping (a YAML file, a checkpoint's stored config)."""

from __future__ import annotations

from dataclasses import fields

from cryoconf.errors import InputError

__all__ = ["settings_from_mapping"]


def settings_from_mapping(cls, data: dict, what: str):
    """``cls(**data)`` for the dataclass ``cls``, refusing keys it does not have (``what`` names
    the settings in the error, e.g. "fit"). Validation is the caller's."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"unknown {what} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**data)
