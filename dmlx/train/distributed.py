"""Several processes, one run: ``jax.distributed`` start-up and the host-side
collectives of dmlx's refresh and evaluation.

dmlx is a multi-controller JAX program (as big_vision and t5x): every process
runs the same loop on its own devices, the mesh spans the devices of all of
them, and XLA's collectives make the jitted step see the global batch. What
runs on the host is organised so that every process agrees without talking
where it can:

- Batches: every process holds the dataset's index and images and draws the
  same global batch (samplers are pure functions of the seed, the step and
  the method state); :func:`global_array` makes the global array from the
  part of it that lands on this process's devices.
- Features (a refresh, an evaluation): the embedding pass is one jitted
  computation over the global mesh, each process feeding its share of every
  batch; :func:`to_host` gathers the result onto every process.
- Method state (centre bank, cluster index, surrogate labels, densities):
  every process runs the method's host step on the same gathered features,
  then :func:`broadcast` replaces every process's result with process 0's,
  bit for bit (FAISS is deterministic for a fixed input and thread count,
  but processes on different machines may not share a thread count).
- Files: only process 0 writes logs, metrics and figures; orbax writes the
  checkpoints of all processes together.
"""
from __future__ import annotations

import os
import pickle
from typing import Any

import jax
import numpy as np

# Environment variables of the local launcher (``launch/cluster/local.py``);
# flags of ``launch/train.py`` take precedence.
ENV_COORDINATOR = "DMLX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "DMLX_NUM_PROCESSES"
ENV_PROCESS_ID = "DMLX_PROCESS_ID"


def cluster_detected(environ=None) -> str | None:
  """The name of a multi-process job environment JAX can configure itself
  from (SLURM with several tasks, Open MPI), or ``None``."""
  env = os.environ if environ is None else environ
  for name, key in (("slurm", "SLURM_STEP_NUM_TASKS"), ("slurm", "SLURM_NTASKS"),
                    ("openmpi", "OMPI_COMM_WORLD_SIZE")):
    try:
      if int(env.get(key, "1")) > 1:
        return name
    except ValueError:
      pass
  return None


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               local_device_ids: str | None = None) -> bool:
  """Starts ``jax.distributed`` before any device is touched; returns
  whether it did.

  ``mode``: ``'auto'`` starts it when a coordinator is given (argument or
  ``$DMLX_COORDINATOR_ADDRESS``) or a multi-task SLURM / MPI job is
  detected; ``'on'`` always (JAX then detects SLURM, Open MPI and Cloud TPU
  VMs itself: the TPU command passes this); ``'off'`` never. On CPU the
  collectives between processes use Gloo.

  Raises:
    ValueError: an unknown mode, or a coordinator without the process
      count and id.
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"--distributed must be auto, on or off, got {mode!r}.")
  address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
    num_processes = int(os.environ[ENV_NUM_PROCESSES])
  if process_id is None and os.environ.get(ENV_PROCESS_ID):
    process_id = int(os.environ[ENV_PROCESS_ID])
  if mode == "off" or (mode == "auto" and not address and not cluster_detected()):
    return False
  if address and (num_processes is None or process_id is None):
    raise ValueError(f"coordinator address {address!r} given without "
                     f"num_processes ({num_processes}) and process_id "
                     f"({process_id}): pass all three.")
  if address and not 0 <= process_id < num_processes:
    raise ValueError(f"process_id {process_id} is not in [0, {num_processes}).")
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, KeyError, ValueError):   # a jax without the option
    pass
  kwargs = {}
  if address:
    kwargs = dict(coordinator_address=address, num_processes=num_processes,
                  process_id=process_id)
  if local_device_ids:
    kwargs["local_device_ids"] = [int(i) for i in local_device_ids.split(",")]
  jax.distributed.initialize(**kwargs)
  return True


def is_main() -> bool:
  """Whether this is process 0 (the one that writes files)."""
  return jax.process_index() == 0


def global_array(sharding: jax.sharding.Sharding, value: np.ndarray) -> jax.Array:
  """The global array ``value`` (the same on every process) with
  ``sharding``: each process transfers only the slices of its own devices.
  One process: ``jax.device_put``."""
  if jax.process_count() == 1:
    return jax.device_put(value, sharding)
  value = np.asarray(value)
  # Explicit per-device copies (allowed under the loop's transfer guard,
  # where make_array_from_callback's implicit ones are not).
  shards = [jax.device_put(value[index], device) for device, index
            in sharding.addressable_devices_indices_map(value.shape).items()]
  return jax.make_array_from_single_device_arrays(value.shape, sharding, shards)


def to_host(tree: Any) -> Any:
  """``jax.device_get`` of a pytree of arrays, on every process: an array
  sharded across processes is gathered first."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree_util.tree_map(one, tree)


def broadcast(tree: Any) -> Any:
  """Process 0's ``tree`` (any picklable host pytree) on every process,
  exactly: dtypes, shapes and bits are kept (it travels as bytes, since
  ``multihost_utils.broadcast_one_to_all`` would turn float64 into float32
  without ``jax_enable_x64``). One process: ``tree`` itself."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  payload = np.frombuffer(pickle.dumps(jax.device_get(tree)) if is_main() else b"",
                          np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(payload.size)))
  buffer = np.zeros(size, np.uint8)
  if is_main():
    buffer[:] = payload
  buffer = np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8)
  return pickle.loads(buffer.tobytes())


def barrier(name: str) -> None:
  """Waits until every process reaches ``name`` (no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def define_flags() -> None:
  """The start-up flags of ``launch/train.py`` and ``launch/evaluate.py``."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                    "jax.distributed start-up: auto (when a coordinator is "
                    "given or a multi-task SLURM / MPI job is detected), on "
                    "(always; JAX detects SLURM, MPI and Cloud TPU VMs), off.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 "
                      f"(default ${ENV_COORDINATOR}).")
  flags.DEFINE_integer("num_processes", None,
                       f"Processes in the job (default ${ENV_NUM_PROCESSES}).")
  flags.DEFINE_integer("process_id", None,
                       f"This process's id (default ${ENV_PROCESS_ID}).")
  flags.DEFINE_string("local_device_ids", None, "Comma-separated local devices "
                      "this process uses (one process per GPU without SLURM).")


def initialize_from_flags() -> bool:
  """:func:`initialize` with the flags of :func:`define_flags`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  return initialize(f.distributed, f.coordinator_address, f.num_processes,
                    f.process_id, f.local_device_ids)
