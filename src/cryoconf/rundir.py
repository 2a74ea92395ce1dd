"""Run directories of the training commands (``sbi train``, ``svi``, ``recon``): generic helpers.

A run directory holds ``config.yaml`` (the full, resolved config), ``run.log``,
``checkpoint.N.pt`` (N = optimiser step; written atomically), ``loss.csv`` and
``loss.png`` (loss curves). ``--load latest`` resumes from the highest N.

- :func:`prepare_run_dir`: create it, refusing to overwrite checkpoints unless resuming.
- :func:`write_config`: ``config.yaml`` (atomic).
- :func:`run_log`: context manager adding a ``run.log`` handler to the ``cryoconf`` logger.
- :func:`save_checkpoint` / :func:`list_checkpoints` / :func:`resolve_checkpoint`.
- :func:`capture_rng_state` / :func:`restore_rng_state`: torch (CPU, CUDA), numpy, python.
- :class:`LossCurve`: the loss CSV (truncated on resume) and its PNG plot.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
import re
from pathlib import Path

import numpy as np
import torch
import yaml

from cryoconf.atomic_write import atomic_path
from cryoconf.errors import InputError

__all__ = [
    "prepare_run_dir", "write_config", "run_log", "atomic_torch_save", "save_checkpoint", "list_checkpoints",
    "resolve_checkpoint", "capture_rng_state", "restore_rng_state", "LossCurve", "CHECKPOINT_PATTERN",
]

CHECKPOINT_PATTERN = re.compile(r"^checkpoint\.(\d+)\.pt$")


def prepare_run_dir(path, resume: bool = False) -> Path:
    """Create run directory ``path``. Without ``resume``, a directory that already holds
    checkpoints is refused (the fix: ``--load latest`` or another ``-o``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a directory; choose another output folder (-o)")
    if not resume and list_checkpoints(path):
        raise InputError(f"{path}: already holds checkpoints; resume with --load latest, or choose another -o")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_config(run_dir, config: dict, name: str = "config.yaml") -> Path:
    """Write ``config`` (a plain dict) as YAML into the run directory, atomically."""
    out = Path(run_dir) / name
    with atomic_path(out) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


@contextlib.contextmanager
def run_log(run_dir, logger: str = "cryoconf", name: str = "run.log"):
    """Append the ``logger`` messages (INFO and up) to ``run_dir/run.log`` while active."""
    handler = logging.FileHandler(Path(run_dir) / name, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger(logger)
    root.addHandler(handler)
    previous = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def atomic_torch_save(obj, path) -> Path:
    """``torch.save`` to ``path`` atomically (a complete file or none)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def save_checkpoint(run_dir, step: int, state: dict, keep: int | None = None) -> Path:
    """Write ``run_dir/checkpoint.{step}.pt`` atomically; with ``keep``, delete all but the newest ``keep``."""
    path = atomic_torch_save(state, Path(run_dir) / f"checkpoint.{int(step)}.pt")
    if keep is not None and keep > 0:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """(step, path) of every ``checkpoint.N.pt`` in ``run_dir``, by increasing step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        m = CHECKPOINT_PATTERN.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_checkpoint(load, run_dir=None, *, option: str = "--load") -> Path | None:
    """What ``--load`` (or ``option``, e.g. ``--init``, named in the errors) names: None → None;
    ``latest`` → the newest checkpoint of ``run_dir`` (refused without a ``run_dir``); a
    directory → its newest checkpoint; otherwise a checkpoint file."""
    if load is None:
        return None
    latest = str(load) == "latest"
    if latest and run_dir is None:
        raise InputError(f"{option} latest: name the run directory or checkpoint to start from; "
                         "to resume this run use --load latest")
    if latest or Path(load).is_dir():
        where = Path(run_dir) if latest else Path(load)
        found = list_checkpoints(where)
        if not found:
            todo = f"train without {option} first" if latest else "train that run first"
            raise InputError(f"{option} {load}: no checkpoint.N.pt in {where}; {todo}")
        return found[-1][1]
    path = Path(load)
    if not path.is_file():
        offer = "'latest', " if run_dir is not None else ""
        raise InputError(f"{option} {load}: no such checkpoint file; give {offer}a run directory or a "
                         "checkpoint.N.pt path")
    return path


def settings_differences(old: dict, new: dict, defaults: dict, resumable=()) -> list[str]:
    """"key: checkpoint X vs now Y" for every flat setting that differs between a checkpoint's ``old``
    and ``new``, except the ``resumable`` keys; a key the checkpoint lacks (written by an older
    cryoconf) counts as its value in ``defaults``."""
    old = {**defaults, **old}
    return [f"{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k not in resumable and old.get(k) != new.get(k)]


def capture_rng_state() -> dict:
    """The global RNG states: torch CPU, every CUDA device, numpy and python ``random``."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict | None) -> None:
    """Restore what :func:`capture_rng_state` captured (missing parts are skipped)."""
    if not state:
        return
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in states])


class LossCurve:
    """Loss curves of a run: rows ``step`` + named values, in ``loss.csv``; plotted to ``loss.png``.

    Rows are buffered and appended on :meth:`flush`. After a resume from step N,
    :meth:`truncate_after` (N) drops rows logged after the checkpoint.
    """

    def __init__(self, run_dir, columns: list[str], name: str = "loss") -> None:
        self.csv_path = Path(run_dir) / f"{name}.csv"
        self.png_path = Path(run_dir) / f"{name}.png"
        self.columns = ["step", *columns]
        self._pending: list[dict] = []

    def add(self, step: int, **values) -> None:
        unknown = set(values) - set(self.columns)
        if unknown:
            raise ValueError(f"LossCurve: unknown columns {sorted(unknown)}")
        self._pending.append({"step": int(step), **values})

    def read(self) -> list[dict]:
        if not self.csv_path.exists():
            return []
        with open(self.csv_path, newline="") as fh:
            rows = []
            for r in csv.DictReader(fh):
                rows.append({k: (int(v) if k == "step" else (float(v) if v not in ("", None) else None))
                             for k, v in r.items() if k in self.columns})
            return rows

    def truncate_after(self, step: int) -> None:
        """Keep only rows with step ≤ ``step`` (rewrites the CSV atomically)."""
        rows = [r for r in self.read() if r["step"] <= step]
        self._pending.clear()
        self._write(rows, mode="w")

    def _write(self, rows: list[dict], mode: str) -> None:
        if mode == "w":
            with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=self.columns)
                w.writeheader()
                for r in rows:
                    w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in self.columns})
        else:
            new = not self.csv_path.exists()
            with open(self.csv_path, "a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=self.columns)
                if new:
                    w.writeheader()
                for r in rows:
                    w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in self.columns})

    def flush(self) -> None:
        if self._pending:
            self._write(self._pending, mode="a")
            self._pending.clear()

    def plot(self, title: str = "", smooth: int = 50) -> Path | None:
        """Plot every column against step into ``loss.png`` (training curves smoothed by a running mean)."""
        self.flush()
        rows = self.read()
        if not rows:
            return None
        from cryoconf.plots import new_figure, save_figure

        fig, ax = new_figure(figsize=(6, 4))
        for col in self.columns[1:]:
            pts = [(r["step"], r[col]) for r in rows if r.get(col) is not None and math.isfinite(r[col])]
            if not pts:
                continue
            x, y = np.array(pts).T
            if col.startswith("train") and len(y) > smooth > 1:
                k = np.ones(smooth) / smooth
                ax.plot(x, y, alpha=0.25, lw=0.5, color="C0")
                ax.plot(x[smooth - 1:], np.convolve(y, k, mode="valid"), label=f"{col} (mean of {smooth})", color="C0")
            else:
                ax.plot(x, y, "o-" if len(y) < 100 else "-", ms=3, label=col)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if title:
            ax.set_title(title)
        ax.legend()
        save_figure(fig, self.png_path, dpi=100)
        return self.png_path
