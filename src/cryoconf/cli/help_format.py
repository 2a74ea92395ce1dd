"""The help formatter every ``cryoconf`` command uses."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends "(default: X)" to an option's help,
    unless the help already states its default or there is none worth stating
    (None, False, an empty list, positional arguments)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False or action.default == []
                or action.default == argparse.SUPPRESS or not action.option_strings):
            return text
        default = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return f"{text} (default: {default})"
