"""config.model.dtype: a bfloat16 backbone under a float32 head and losses."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import configs
import tiny_configs
from dmlx import models
from dmlx.train import checks
from dmlx.train import loop


def _model_config(backbone="resnet18", dtype="bfloat16", **kwargs):
  return ml_collections.ConfigDict({
      "backbone": backbone, "backbone_kwargs": kwargs, "embedding_dim": 8,
      "fc_layers": (), "normalise": True, "scale": 1.0, "dropout": 0.0,
      "aux_embedding_dim": 0, "input_layer": "pooled", "dtype": dtype})


def _products_in_bfloat16(model, variables, x) -> tuple[int, int]:
  """(convolutions and matmuls of the lowered forward, those on bf16)."""
  text = jax.jit(lambda v: model.apply(v, x)).lower(variables).as_text()
  products = [l for l in text.splitlines()
              if "stablehlo.convolution" in l or "stablehlo.dot_general" in l]
  return len(products), sum("bf16" in l for l in products)


def test_bfloat16_backbone_float32_parameters_features_and_head():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  half = models.build_model(_model_config(num_filters=4))
  full = models.build_model(_model_config(dtype="float32", num_filters=4))
  variables = full.init(jax.random.PRNGKey(1), x)
  dtypes = {a.dtype for a in jax.tree_util.tree_leaves(variables)}
  assert dtypes == {jnp.dtype("float32")}
  a, b = half.apply(variables, x), full.apply(variables, x)
  for key in b:
    assert a[key].dtype == jnp.float32, key
  # Computed in bfloat16 (8-bit mantissa): close to float32, not equal.
  diff = float(jnp.max(jnp.abs(a["pooled"] - b["pooled"])))
  scale = float(jnp.max(jnp.abs(b["pooled"])))
  assert 0 < diff < 0.05 * scale
  total, half_products = _products_in_bfloat16(half, variables, x)
  assert total > 20 and half_products >= total - 1   # all but the f32 head
  assert _products_in_bfloat16(full, variables, x)[1] == 0
  # Gradients of float32 parameters are float32.
  grads = jax.grad(lambda v: jnp.sum(half.apply(v, x)["embedding"][:, 0]))(
      variables)
  assert {g.dtype for g in jax.tree_util.tree_leaves(grads)} == {
      jnp.dtype("float32")}
  assert all(bool(jnp.all(jnp.isfinite(g)))
             for g in jax.tree_util.tree_leaves(grads))


def test_bad_compute_dtype_is_refused_naming_the_value():
  with pytest.raises(ValueError, match="'bf16'"):
    models.build_model(_model_config(dtype="bf16", num_filters=4))
  with pytest.raises(ValueError, match="small_cnn"):
    models.build_model(_model_config("small_cnn", width=4, num_blocks=1))
  c = configs.load("baselines.py:loss=margin")
  c.model.dtype = "int8"
  with pytest.raises(ValueError, match="model.dtype"):
    checks.check_config(c)


def _losses(workdir) -> list[float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [r["train/loss"] for r in records if "train/loss" in r]


def test_a_bfloat16_run_follows_the_float32_run(tmp_path):
  """The whole loop (steps, evaluation, checkpoint) under bfloat16: the same
  seed and data give the float32 run's training losses to bfloat16 accuracy,
  and the checkpointed parameters stay float32."""
  losses = {}
  for dtype in ("float32", "bfloat16"):
    c = tiny_configs.shrink(configs.load("baselines.py:loss=contrastive"),
                            steps=4, log_every=1)
    c.model.backbone = "resnet18"
    c.model.backbone_kwargs = ml_collections.ConfigDict({"num_filters": 4})
    c.model.dtype = dtype
    workdir = str(tmp_path / dtype)
    final = loop.train_and_evaluate(c, workdir)
    losses[dtype] = _losses(workdir)
    assert "embedding" in final["trained"]["test"]
  assert len(losses["float32"]) == 4
  # Same weights at step 1; then updates computed from bfloat16 gradients.
  np.testing.assert_allclose(losses["bfloat16"][0], losses["float32"][0],
                             rtol=0.02)
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.1)
  assert losses["bfloat16"] != losses["float32"]
