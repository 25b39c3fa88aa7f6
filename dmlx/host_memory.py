"""Host memory: keep freed memory in the process, so XLA:CPU's buffers do not fault.

XLA:CPU allocates every executable's temporaries with ``malloc`` on each call
and frees them at the end. glibc gives blocks above its mmap threshold (at
most 32 MiB) their own ``mmap`` and unmaps them on ``free``, and its worker
threads' arenas hand freed pages back with ``madvise``; so each call of a
jitted step first-touches its temporaries again, one page fault and one
zeroed 4 KiB page at a time. Measured on the 2-core development machine (one
thread): a B = 2048 contrastive-style loss took 12,290 page faults (50 MB)
per call, 122 ms; with the memory kept, 0 faults and 82 ms. A ResNet-18 train
step (64 px, batch 64) went from 33.4 to 39.5 img/s (``docs/speed.md``).

:func:`configure` sets glibc's ``mallopt`` options so that freed memory
stays in the process: one arena (``M_ARENA_MAX = 1``: the worker threads
allocate from the main heap, which has no size cap), no ``mmap``-ed blocks
(``M_MMAP_MAX = 0``) and no trimming (``M_TRIM_THRESHOLD`` at its maximum).
The cost is that the process's resident memory stays at its peak, which a
training job reaches in its first steps anyway.

``launch/train.py``, ``launch/evaluate.py`` and ``launch/embed.py`` call it
with their ``--host_memory`` flag (default ``auto``: on when JAX will run on
the CPU). Code that imports dmlx's losses into its own JAX
program can call ``configure("keep")`` itself, early.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys
from typing import Optional

MODES = ("auto", "keep", "system")

# glibc's <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_applied: Optional[str] = None


def _glibc() -> Optional[ctypes.CDLL]:
  """The C library when it is glibc (``mallopt`` exists), else ``None``."""
  if platform.system() != "Linux":
    return None
  libc_name, _ = platform.libc_ver()
  if libc_name != "glibc":
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None
  return libc if hasattr(libc, "mallopt") else None


def _cpu_backend_expected() -> bool:
  """Whether JAX will run on the CPU, decided without starting its backends.

  Starting them first would be too late: XLA's worker threads would already
  hold arenas of their own (measured: 2,082 of 16,420 page faults per call
  remain when ``mallopt`` comes after ``jax.default_backend()``). So: the
  platforms JAX was told to use (``JAX_PLATFORMS`` / ``jax_platforms``),
  else whether a GPU / TPU runtime is installed (a PJRT plugin package or
  ``libtpu``).
  """
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if not platforms and "jax" in sys.modules:
    platforms = getattr(sys.modules["jax"].config, "jax_platforms", "") or ""
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  if importlib.util.find_spec("libtpu") is not None:
    return False
  if list(importlib.metadata.entry_points(group="jax_plugins")):
    return False
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  except ImportError:
    return True
  return not list(getattr(jax_plugins, "__path__", []))


def keep_freed_memory() -> None:
  """Sets glibc's ``mallopt`` so freed host memory stays in the process.

  Process-wide and not undone: call it once, before the first large
  computation (allocations made earlier keep their old placement).

  Raises:
    RuntimeError: the C library is not glibc, or ``mallopt`` refused an
      option.
  """
  global _applied
  libc = _glibc()
  if libc is None:
    raise RuntimeError(
        "host_memory='keep' needs glibc's mallopt; this is "
        f"{platform.system()} with {platform.libc_ver()[0] or 'an unknown libc'}. "
        "Use host_memory='system'.")
  for name, option, value in (("M_ARENA_MAX", _M_ARENA_MAX, 1),
                              ("M_MMAP_MAX", _M_MMAP_MAX, 0),
                              ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, _INT_MAX)):
    if libc.mallopt(option, value) != 1:
      raise RuntimeError(f"mallopt({name}, {value}) failed")
  _applied = "keep"


def configure(mode: str = "auto") -> str:
  """Applies a host-memory mode and returns the one in effect.

  Args:
    mode: ``'keep'`` (:func:`keep_freed_memory`), ``'system'`` (the C
      library's defaults, nothing changed) or ``'auto'``: ``'keep'`` when
      JAX's default backend is the CPU and the C library is glibc, else
      ``'system'``, decided without starting JAX's backends (call it before
      the first computation).

  Returns:
    ``'keep'`` or ``'system'``.

  Raises:
    ValueError: ``mode`` is not one of :data:`MODES`.
  """
  if mode not in MODES:
    raise ValueError(f"host_memory={mode!r}; expected one of {MODES}")
  if mode == "auto":
    mode = "keep" if _cpu_backend_expected() and _glibc() else "system"
  if mode == "keep" and _applied != "keep":
    keep_freed_memory()
  return _applied or "system"


def define_flag() -> None:
  """The ``--host_memory`` flag of the launch scripts."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum(
      "host_memory", "auto", list(MODES),
      "keep: glibc keeps freed memory in the process, so XLA:CPU's per-call "
      "buffers do not page-fault again (faster CPU steps; resident memory "
      "stays at its peak); system: the C library's defaults; auto: keep when "
      "JAX will run on the CPU (no GPU / TPU runtime installed or JAX_PLATFORMS=cpu).")
