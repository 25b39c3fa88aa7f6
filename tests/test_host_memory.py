"""dmlx.host_memory: kept host memory stops XLA:CPU's per-call page faults."""
import os

import pytest

import child_process  # tests/child_process.py
from dmlx import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A jitted function whose temporaries (x @ x.T and its exp, 4096 x 4096
# float32 = 64 MiB each) are far above glibc's largest mmap threshold.
_PROBE = r"""
import json, resource, sys
from dmlx import host_memory
mode = host_memory.configure(sys.argv[1])
import jax, jax.numpy as jnp
x = jnp.ones((4096, 16), jnp.float32) / 4
f = jax.jit(lambda x: jnp.sum(jnp.exp(x @ x.T)))
for _ in range(2):
  f(x).block_until_ready()
per_call = []
for _ in range(7):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The median call: a one-off burst elsewhere in the process (a new thread's
# stack, the kernel's huge-page work) is not the per-call regime measured.
faults = sorted(per_call)[len(per_call) // 2]
print(json.dumps({"mode": mode, "faults_per_call": faults,
                  "per_call": per_call}))
"""


def _faults(mode: str) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
         "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  return child_process.last_json(["-c", _PROBE, mode], env=env)


@pytest.mark.skipif(host_memory._glibc() is None, reason="needs glibc")  # pylint: disable=protected-access
def test_keep_removes_the_per_call_page_faults():
  system = _faults("system")
  kept = _faults("auto")     # the launchers' default; JAX_PLATFORMS=cpu
  assert system["mode"] == "system" and kept["mode"] == "keep"
  pages_of_one_temporary = 4096 * 4096 * 4 / 4096
  # The regime: with the C library's defaults every call faults its 64 MiB
  # temporaries in again ...
  assert system["faults_per_call"] > 0.5 * pages_of_one_temporary, system
  # ... and with the memory kept it does not.
  assert kept["faults_per_call"] < 0.02 * system["faults_per_call"], (system, kept)


def test_bad_mode_is_named():
  with pytest.raises(ValueError, match="host_memory='fast'"):
    host_memory.configure("fast")


def test_keep_without_glibc_says_so(monkeypatch):
  monkeypatch.setattr(host_memory, "_glibc", lambda: None)
  with pytest.raises(RuntimeError, match="needs glibc's mallopt"):
    host_memory.configure("keep")
