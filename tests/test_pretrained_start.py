"""The pretrained start (configs/pretrain.py → launch/convert_weights.py →
``start=pretrained``): a pretraining export loads into every method's
fine-tuning config, and fine-tuning starts from exactly those weights (its
first evaluation is the pretrained-only row)."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import configs
from dmlx import eval as dmlx_eval
from dmlx.data import augment
from dmlx.models import pretrained
from dmlx.models.small_cnn import SmallCNN
from dmlx.train import loop
from dmlx.train import run as run_lib
import experiment_scripts  # tests/experiment_scripts.py

NUM_CLASSES, PER_CLASS = 8, 12
BACKBONE = {"width": 4, "num_blocks": 2, "widen": True}


def _tiny_imagenet(root) -> str:
  """A Tiny ImageNet layout of 8 classes × 12 images (class = a colour)."""
  tin = root / "tiny-imagenet-200"
  wnids = [f"n{c:08d}" for c in range(NUM_CLASSES)]
  rng = np.random.default_rng(0)
  for c, w in enumerate(wnids):
    folder = tin / "train" / w / "images"
    folder.mkdir(parents=True)
    for i in range(PER_CLASS):
      img = rng.integers(0, 60, (20, 20, 3)).astype(np.uint8)
      img[..., c % 3] += np.uint8(60 + 20 * c)
      Image.fromarray(img).save(folder / f"{w}_{i}.JPEG")
  (tin / "wnids.txt").write_text("\n".join(wnids) + "\n")
  (tin / "words.txt").write_text("".join(f"{w}\tclass {w}\n" for w in wnids))
  return str(tin)


def _shrink(c, data_dir):
  c.data.data_dir = data_dir
  c.data.image_size, c.data.crop_size = 12, 8
  c.model.backbone_kwargs.update(BACKBONE)
  c.train.progress = False
  c.eval.batch_size = 32
  c.eval.ks = (1, 2)
  c.eval.metrics = ("recall", "nmi")
  return c


def _export_view(record, images):
  """Test-time view of ``images`` with the export's input normalisation."""
  prep = record["preprocessing"]
  return augment.preprocess(jnp.asarray(images), None, crop_size=8, flip=False,
                            mean=prep["mean"], std=prep["std"], train=False)


def _export_pooled(record, images):
  """The exported backbone's pooled features, computed without dmlx's
  trainer."""
  return SmallCNN(**BACKBONE).apply({"params": record["params"],
                                     "batch_stats": record["batch_stats"]},
                                    _export_view(record, images))["pooled"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  """A pretraining run on classes 0-3 and its exported backbone."""
  tmp = tmp_path_factory.mktemp("pretrain")
  data_dir = _tiny_imagenet(tmp)
  c = _shrink(configs.load("pretrain.py:runlocal"), data_dir)
  c.data.class_range = (0, 4)
  c.eval.metrics = ("recall",)
  final = loop.train_and_evaluate(c, str(tmp / "run"))
  assert "classifier_accuracy" in final["method"]
  record = pretrained.export_workdir(str(tmp / "run"))
  path = str(tmp / "backbone.msgpack")
  pretrained.save(record, path)
  return data_dir, path, pretrained.load(path), tmp


def _finetune(method, data_dir, path, dataset="tinyimagenet"):
  c = configs.load(f"real_data.py:dataset={dataset},method={method},"
                   "start=pretrained,runlocal")
  c = _shrink(c, data_dir)
  c.model.pretrained = path
  c.data.num_train_classes = 4          # classes 4-7: unseen in pretraining
  c.sampler.classes_per_batch = 2
  if c.method.name == "mic":
    c.method.num_clusters = 3
  if c.method.name == "magnet":
    c.method.M, c.method.K = 2, 1
  return c


# Four of the eight run in the slow suite, to keep the default one in its
# time (each trains a fine-tune config; the loading path is the same).
@pytest.mark.parametrize("method", [
    "nngk", pytest.param("magnet", marks=pytest.mark.slow),
    pytest.param("mic", marks=pytest.mark.slow),
    pytest.param("dmlda_contrastive", marks=pytest.mark.slow),
    pytest.param("smooth_triplet", marks=pytest.mark.slow), "margin_per_class",
    "triplet_semihard", "softmax"])
def test_every_fine_tune_config_loads_the_export(export, method, tmp_path):
  data_dir, path, record, _ = export
  c = _finetune(method, data_dir, path)
  run = run_lib.build(c, str(tmp_path))
  state, _ = run_lib.fresh_state(run)
  got = jax.device_get(state.params["model"]["backbone"])
  for a, b in zip(jax.tree_util.tree_leaves(got),
                  jax.tree_util.tree_leaves(record["params"])):
    np.testing.assert_array_equal(a, b)
  got_stats = jax.device_get(state.batch_stats["backbone"])
  for a, b in zip(jax.tree_util.tree_leaves(got_stats),
                  jax.tree_util.tree_leaves(record["batch_stats"])):
    np.testing.assert_array_equal(a, b)
  assert tuple(run.data_config.mean) == tuple(record["preprocessing"]["mean"])
  assert c.model.backbone_kwargs.get("frozen_bn", False) == (
      method in ("mic", "margin_per_class"))
  run.checkpointer.close()
  run.writer.close()


def test_fine_tuning_starts_from_the_pretrained_weights(export):
  """The fine-tuning run's first evaluation (its ``untrained_metrics.json``,
  the pretrained-only row) is the exported backbone's own pooled features,
  computed here without dmlx's trainer."""
  data_dir, path, record, tmp = export
  c = _finetune("nngk", data_dir, path)
  workdir = str(tmp / "finetune")
  loop.train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "untrained_metrics.json")) as f:
    first = json.load(f)["test"]["pooled"]
  run = run_lib.build(c, str(tmp / "probe"))
  test = run.test
  pooled = _export_pooled(record, test.images)
  want = dmlx_eval.evaluate_retrieval(np.asarray(pooled), test.labels, ks=(1, 2),
                                      metrics=("recall", "nmi"))
  assert first.keys() == want.keys()
  for k in want:
    assert first[k] == pytest.approx(want[k], abs=1e-6), k
  # ... and not those of a random backbone.
  x = _export_view(record, test.images)
  net = SmallCNN(**BACKBONE)
  fresh = net.init(jax.random.PRNGKey(3), x[:1])
  random = net.apply(fresh, x)["pooled"]
  assert not np.allclose(np.asarray(random), np.asarray(pooled), atol=1e-3)
  run.checkpointer.close()
  run.writer.close()


def test_pml_replica_starts_from_the_export(export):
  """PML's rows of the pretrained start: the torch replica gets the exported
  backbone (through the flax network) and the weights' input normalisation,
  so its test-set pooled features are the export's own."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("pytorch_metric_learning")
  script = experiment_scripts.load("pml_reference")
  data_dir, path, record, tmp = export
  c = _finetune("triplet_semihard", data_dir, path)
  net = script.build_torch_model(c.model, 3)
  script.copy_flax_variables(net, script.flax_init(c, 3)[0])
  net.eval()
  run = run_lib.build(c, str(tmp / "pml_probe"))
  images = run.test.images[:6]
  with torch.no_grad():
    got = net(script.eval_preprocess(images, run_lib.data_config(c)))["pooled"]
  want = _export_pooled(record, images)
  np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="init='torch'"):
    script.train_pml(c, "triplet_semihard", str(tmp / "pml_torch"), init="torch")
  run.checkpointer.close()
  run.writer.close()


def test_omniglot_fine_tunes_the_pretrained_network():
  """A start brings its architecture: Omniglot's pretrained runs use the
  exported Tiny ImageNet CNN (not the from-scratch Conv-4) on three channels."""
  from configs import real_data  # pylint: disable=g-import-not-at-top
  scratch = configs.load("real_data.py:dataset=omniglot,method=nngk")
  c = configs.load("real_data.py:dataset=omniglot,method=nngk,start=pretrained")
  assert dict(c.model.backbone_kwargs) == real_data.TINYIMAGENET_CNN
  assert dict(scratch.model.backbone_kwargs) != real_data.TINYIMAGENET_CNN
  assert c.data.options.channels == 3
  pre = configs.load("pretrain.py")
  assert dict(pre.model.backbone_kwargs) == real_data.TINYIMAGENET_CNN
