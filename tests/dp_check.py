"""Run in a subprocess with 8 simulated CPU devices (see test_data_parallel.py):
prints the max abs difference between 1-device and 8-device loss/gradients."""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from dmlx import methods, models
from dmlx.config import base_config
from dmlx.data.digits import load_digits
from dmlx.data.samplers import PKSampler
from dmlx.methods.base import ModelInfo
from dmlx.train import step as step_lib


def main(loss_name):
  assert jax.device_count() == 8, jax.devices()
  c = base_config()
  c.loss.name = loss_name
  c.loss.kwargs = {} if loss_name != "triplet_semihard" else {"margin": 0.2}
  c.data.mean, c.data.std = (0.2,), (0.35,)
  ds = load_digits(16)
  model = models.build_model(c.model)
  method, cfg = methods.from_config(c)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
  info = ModelInfo(num_classes=10, num_train=len(ds), embedding_dim=c.model.embedding_dim)
  params = {"model": variables["params"],
            "method": method.init_params(cfg, jax.random.PRNGKey(1), info)}
  idx = PKSampler(ds.labels, 8, 4, 0).batch(0)
  batch = {"images": ds.images[idx], "labels": ds.labels[idx], "index": idx.astype(np.int32)}
  out = {}
  for n in (1, 8):
    mesh = step_lib.make_mesh(jax.devices()[:n])
    fn = jax.jit(step_lib.make_grad_fn(model, method.loss, cfg, c.data))
    sharded = step_lib.shard_batch(mesh, batch)
    loss, _, stats, grads = fn(
        step_lib.replicate(mesh, params),
        step_lib.replicate(mesh, variables["batch_stats"]), (), sharded,
        jax.random.PRNGKey(2))
    out[n] = (float(loss), jax.device_get(grads), jax.device_get(stats),
              len(sharded["images"].sharding.device_set))
  scale = max(float(np.max(np.abs(a))) for a in jax.tree_util.tree_leaves(out[1][1]))
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves((out[1][1], out[1][2])),
      jax.tree_util.tree_leaves((out[8][1], out[8][2]))))
  print(json.dumps({"loss1": out[1][0], "loss8": out[8][0], "max_grad_diff": diff,
                    "grad_scale": scale, "devices_used": out[8][3]}))


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "triplet_semihard")
