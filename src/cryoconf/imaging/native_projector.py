"""Optional compiled CPU kernel for the forward (no-gradient) Gaussian projection.

The projector in :mod:`cryoconf.imaging.projection` is pure torch and is the
reference. On the CPU, when no gradient is needed, the same projection (same
normalised inputs, same 6σ windows, same clamp of exp's argument) runs in a
small C kernel (``native_projector.c``, OpenMP over particles): one fused loop
instead of a dozen tensor passes, about 10× faster on two cores. It is built
once per machine with the system C compiler (``cc``, or ``$CC``) into
``$CRYOCONF_CACHE`` (default ``~/.cache/cryoconf``) and loaded with ctypes; no
Python build step, no torch headers. Where there is no compiler, or the build
fails, or ``CRYOCONF_NATIVE=0``, everything runs in torch, with the same
results (tests compare the two).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from cryoconf.atomic_write import atomic_path

log = logging.getLogger("cryoconf.imaging")

_SOURCE = Path(__file__).with_name("native_projector.c")
# -ffast-math at compile time only (vector exp from libmvec); linking with it would add crtfastmath.o,
# which sets flush-to-zero/denormals-are-zero for the whole process when the library loads
_COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fPIC", "-fopenmp", "-c"]
_LINK_FLAGS = ["-shared", "-fopenmp"]
_lock = threading.Lock()
_state: dict = {}


def _cache_dir() -> Path:
    root = os.environ.get("CRYOCONF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cryoconf")
    return Path(root) / "native"


def _cpu_signature() -> str:
    """Something that changes when -march=native would produce different code."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(cc: str) -> Path:
    source = _SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(b"\0".join(
        [source, " ".join(_COMPILE_FLAGS + _LINK_FLAGS).encode(), version.encode(), platform.machine().encode(),
         _cpu_signature().encode()]
    )).hexdigest()[:20]
    target = _cache_dir() / f"projector_{key}.so"
    if not target.exists():
        with atomic_path(target) as tmp, tempfile.TemporaryDirectory() as work:
            obj = os.path.join(work, "projector.o")
            for cmd in ([cc, *_COMPILE_FLAGS, "-o", obj, str(_SOURCE)], [cc, *_LINK_FLAGS, "-o", str(tmp), obj, "-lm"]):
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                if result.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()[:500]}")
    return target


def _load():
    """The loaded library, or None (with the reason logged once)."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib = None
        if os.environ.get("CRYOCONF_NATIVE", "1") == "0":
            reason = "disabled by CRYOCONF_NATIVE=0"
        else:
            cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            reason = "no C compiler found (cc, gcc or $CC)" if cc is None else ""
            if cc is not None:
                try:
                    lib = ctypes.CDLL(str(_build(cc)))
                    for name in ("cryoconf_project_f32", "cryoconf_project_f64"):
                        fn = getattr(lib, name)
                        fn.restype = ctypes.c_int
                        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int, ctypes.c_long, ctypes.c_long,
                                                               ctypes.c_long, ctypes.c_int, ctypes.c_int,
                                                               ctypes.c_void_p]
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    lib, reason = None, str(exc)
        if lib is None:
            log.info("compiled CPU projector unavailable (%s); using the torch projector", reason)
        _state["lib"] = lib
        return lib


def available() -> bool:
    """Whether the compiled kernel can be used in this process."""
    return _load() is not None


def usable_for(*tensors: torch.Tensor) -> bool:
    """True when the kernel applies: CPU float32/float64 tensors that need no gradient."""
    t0 = tensors[0]
    if t0.device.type != "cpu" or t0.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return available()


def project(cx: torch.Tensor, cy: torch.Tensor, amp: torch.Tensor, sig_px: torch.Tensor, box: int,
            method: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """Images (b, box, box) from centres (b, n) in pixel-index units, normalised amplitudes (b, n)
    and widths ``sig_px`` (b, 1) or (b, n) in pixels; the kernel of :func:`project_gaussians`."""
    lib = _load()
    dt = cx.dtype
    b, n = cx.shape
    cx, cy, amp = (t.detach().to(dt).contiguous() for t in (cx, cy, amp))
    per_atom = sig_px.shape[1] > 1
    sig = sig_px.detach().to(dt).reshape(b, -1)[:, : (n if per_atom else 1)].contiguous()
    if out is None or out.shape != (b, box, box) or out.dtype != dt or not out.is_contiguous():
        out = torch.empty(b, box, box, dtype=dt)
    fn = lib.cryoconf_project_f32 if dt == torch.float32 else lib.cryoconf_project_f64
    failed = fn(cx.data_ptr(), cy.data_ptr(), amp.data_ptr(), sig.data_ptr(), int(per_atom), b, n, box,
                int(method == "pixel"), torch.get_num_threads(), out.data_ptr())
    if failed:
        raise MemoryError("the compiled projector could not allocate its working memory")
    return out
