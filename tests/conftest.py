"""Makes the repository root importable (``import configs``) in every test,
and shares one JAX persistent compilation cache between the tests, their
xdist workers and the subprocesses they start: many tests train the same
tiny configs, and a cache hit skips XLA's compilation (measured on
tests/test_train_loop.py: 325 → 205 CPU-s in one run). The cache is keyed on
the computation, the compile options and the jax / jaxlib version, so it
changes no result; set ``JAX_COMPILATION_CACHE_DIR`` to move it, or to an
empty string to turn it off."""
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Read by jax when it is first imported (here, before any test module).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"dmlx-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
