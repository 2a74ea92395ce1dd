"""The benchmarks' output: one JSON object on standard output, also written to ``--json`` when given."""

from __future__ import annotations

import json
from pathlib import Path


def emit(report: dict, path=None) -> dict:
    """Print ``report`` as JSON, and write it to ``path`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    return report
