"""Run by test_multi_process.py as each process of a 2-process
``launch/cluster/local.py`` job: dmlx's host collectives on real processes
(Gloo on CPU). Prints one JSON line of what this process saw."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dmlx.train import distributed  # pylint: disable=g-import-not-at-top,wrong-import-position

started = distributed.initialize("auto")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dmlx.train import step as step_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

pid = jax.process_index()
mesh = step_lib.make_mesh()
rows = np.arange(4 * jax.device_count(), dtype=np.float32).reshape(-1, 1) ** 2
batch = step_lib.shard_batch(mesh, {"x": rows})["x"]          # the global batch
total = float(jax.jit(jnp.sum)(batch))                         # seen whole by the step
doubled = distributed.to_host(jax.jit(lambda x: 2 * x)(batch))  # gathered
own = {"bank": np.full((3, 2), 0.1 * (pid + 1), np.float64),   # differs per process
       "ids": np.arange(3, dtype=np.int64) + 2**40 * pid, "name": f"p{pid}"}
shared = distributed.broadcast(own)
replicated = step_lib.replicate(mesh, {"w": np.full(3, 1.5, np.float32)})
print(json.dumps({
    "started": started, "process": pid, "processes": jax.process_count(),
    "sum": total, "expected_sum": float(rows.sum()),
    "gathered_equal": bool(np.array_equal(doubled, 2 * rows)),
    "bank_dtype": str(shared["bank"].dtype), "bank": shared["bank"].tolist(),
    "ids": [int(i) for i in shared["ids"]], "name": shared["name"],
    "replicated": np.asarray(replicated["w"]).tolist()}), flush=True)
