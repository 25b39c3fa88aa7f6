"""Tests for dmlx.models.pretrained and dmlx.models.weight_files.

The equivalence tests build each reference network by hand in PyTorch with
torchvision's (or Cadene's) module names and real topology at reduced width,
save its random state dict as ``.pth`` and ``.safetensors``, convert it and
check that the dmlx backbone, loaded through ``load_into`` into a whole
``EmbeddingNet``, computes the same features as torch in eval mode. They skip
without torch; the reader, error-message, preprocessing and export tests run
on NumPy state dicts written by a small safetensors writer below.
"""
import collections
import json
import os
import struct

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from dmlx import models
from dmlx.models import pretrained
from dmlx.models import torch_reference
from dmlx.models import weight_files

# ------------------------------------------------------------------- helpers

_ST_CODES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16",
             np.dtype("int64"): "I64", np.dtype("bool"): "BOOL",
             np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype("uint8"): "U8"}


def _write_safetensors(path, tensors):
  """The safetensors layout written by hand: u64 header size, JSON, data."""
  header, blobs, offset = {"__metadata__": {"format": "np"}}, [], 0
  for name, a in tensors.items():
    data = np.ascontiguousarray(a).tobytes()
    header[name] = {"dtype": _ST_CODES[a.dtype], "shape": list(a.shape),
                    "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  text = json.dumps(header).encode()
  text += b" " * (-len(text) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def _resnet18_state_dict(width, seed=0):
  """torchvision resnet18 names and shapes, filled with NumPy noise."""
  rng = np.random.default_rng(seed)
  sd = collections.OrderedDict()

  def conv(name, o, i, k):
    sd[f"{name}.weight"] = rng.normal(0, 0.1, (o, i, k, k)).astype(np.float32)

  def bn(name, c):
    sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{name}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[f"{name}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[f"{name}.running_var"] = rng.uniform(0.5, 2, c).astype(np.float32)
    sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

  conv("conv1", width, 3, 7)
  bn("bn1", width)
  inp = width
  for s in range(4):
    planes = width * 2**s
    for b in range(2):
      p = f"layer{s + 1}.{b}"
      conv(f"{p}.conv1", planes, inp, 3)
      bn(f"{p}.bn1", planes)
      conv(f"{p}.conv2", planes, planes, 3)
      bn(f"{p}.bn2", planes)
      if b == 0 and s > 0:
        conv(f"{p}.downsample.0", planes, inp, 1)
        bn(f"{p}.downsample.1", planes)
      inp = planes
  sd["fc.weight"] = rng.normal(size=(1000, inp)).astype(np.float32)
  sd["fc.bias"] = np.zeros(1000, np.float32)
  return sd


def _embedding_template(arch, kwargs, size):
  """Zero-filled EmbeddingNet variables (shapes traced, nothing compiled)."""
  model = models.EmbeddingNet(backbone=models.get_backbone(arch, **kwargs),
                              embedding_dim=4)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, size, size, 3)))
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  return model, zeros["params"], zeros.get("batch_stats", {})


# ------------------------------------------------- readers (no torch needed)


def test_safetensors_pure_reader_and_package_agree(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {"a.weight": rng.normal(size=(3, 4, 2)).astype(np.float32),
             "h": rng.normal(size=5).astype(np.float16),
             "b16": rng.normal(size=(2, 3)).astype(ml_dtypes.bfloat16),
             "i": np.arange(6, dtype=np.int64).reshape(2, 3),
             "flag": np.array([True, False]), "empty": np.zeros((0, 3),
                                                                np.float32)}
  path = str(tmp_path / "w.safetensors")
  _write_safetensors(path, tensors)
  readers = [lambda p: weight_files.read_safetensors(p, use_package=False),
             weight_files.read_state_dict]
  for read in readers:
    got = read(path)
    assert sorted(got) == sorted(tensors)
    for k, v in tensors.items():
      assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
      np.testing.assert_array_equal(got[k], v)


def test_h5_reader(tmp_path):
  h5py = pytest.importorskip("h5py")
  path = str(tmp_path / "w.h5")
  with h5py.File(path, "w") as f:
    f.create_dataset("conv1/conv1/kernel:0", data=np.ones((3, 3, 3, 2)))
  got = weight_files.read_state_dict(path)
  assert got["conv1/conv1/kernel:0"].shape == (3, 3, 3, 2)
  with pytest.raises(ValueError, match="Keras"):
    pretrained.convert(path)


def test_unknown_format_is_a_clear_error(tmp_path):
  path = str(tmp_path / "w.bin")
  with open(path, "wb") as f:
    f.write(b"not a checkpoint at all")
  with pytest.raises(ValueError, match="not a safetensors, PyTorch"):
    weight_files.read_state_dict(path)


# ----------------------------------------- name maps, errors (no torch needed)


def test_raw_safetensors_load_into_maps_every_tensor(tmp_path):
  sd = _resnet18_state_dict(width=4)
  path = str(tmp_path / "resnet18.safetensors")
  _write_safetensors(path, sd)
  assert pretrained.detect_arch(sd) == "resnet18"
  _, params, stats = _embedding_template("resnet18", {"num_filters": 4}, 64)
  params["embedding"]["kernel"][:] = 3.0
  new_params, new_stats = pretrained.load_into(path, params, stats)
  np.testing.assert_array_equal(new_params["embedding"]["kernel"], 3.0)
  bb, bs = new_params["backbone"], new_stats["backbone"]
  checked = 0
  for key, value in sd.items():  # every tensor lands where the tables say
    mod, leaf = key.rsplit(".", 1)
    if mod == "fc" or leaf == "num_batches_tracked":
      continue
    path_ = mod.replace(".downsample.0", ".downsample_conv").replace(
        ".downsample.1", ".downsample_bn").replace(".", "_", 1).split(".")
    node = bs if leaf.startswith("running") else bb
    for p in path_:
      node = node[p]
    if leaf == "weight" and value.ndim == 4:
      got, want = node["kernel"], value.transpose(2, 3, 1, 0)
    else:
      name = {"weight": "scale", "bias": "bias", "running_mean": "mean",
              "running_var": "var"}[leaf]
      got, want = node[name], value
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=key)
    checked += 1
  assert checked == 20 + 20 * 4  # 20 convs, 20 BatchNorms x 4 tensors


def test_wrong_state_dict_lists_missing_unexpected_misshaped(tmp_path):
  sd = _resnet18_state_dict(width=4)
  del sd["layer4.1.conv2.weight"]
  sd["layer5.0.conv1.weight"] = np.zeros((4, 4, 3, 3), np.float32)
  sd["conv1.weight"] = np.zeros((4, 3, 3, 3), np.float32)
  path = str(tmp_path / "bad.safetensors")
  _write_safetensors(path, sd)
  with pytest.raises(ValueError) as e:
    pretrained.convert(path, "resnet18", {"num_filters": 4})
  msg = str(e.value)
  assert "1 missing from the file: params/layer4_1/conv2/kernel (3, 3, 32, 32)" \
      in msg
  assert "params/layer5_0/conv1/kernel (from layer5.0.conv1.weight)" in msg
  assert ("params/conv1/kernel (from conv1.weight): file (3, 3, 3, 4) vs "
          "backbone (7, 7, 3, 4)") in msg
  sd2 = _resnet18_state_dict(width=4)
  sd2["layer1.0.conv1.alpha"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r"map to no dmlx layer: "
                     r"layer1\.0\.conv1\.alpha \(3,\)"):
    pretrained.convert_state_dict(sd2, "resnet18")
  sd3 = _resnet18_state_dict(width=4)  # the older BN-Inception port's [1, C]
  sd3["bn1.running_var"] = sd3["bn1.running_var"][None]
  _, stats, _ = pretrained.convert_state_dict(sd3, "resnet18")
  np.testing.assert_array_equal(stats["bn1"]["var"], sd3["bn1.running_var"][0])
  with pytest.raises(ValueError, match="cannot tell the architecture"):
    pretrained.detect_arch({"foo.weight": np.zeros(1)})
  with pytest.raises(ValueError, match="holds a resnet18"):
    pretrained.convert(path, "googlenet")


def test_load_into_rejects_another_width(tmp_path):
  path = str(tmp_path / "r18.safetensors")
  _write_safetensors(path, _resnet18_state_dict(width=4))
  dst = str(tmp_path / "r18.msgpack")
  pretrained.save(pretrained.convert(path, "resnet18", {"num_filters": 4}),
                  dst)
  _, params, stats = _embedding_template("resnet18", {"num_filters": 8}, 64)
  with pytest.raises(ValueError, match=r"100 mis-shaped: .*params/conv1/"
                     r"kernel \(from conv1\.weight\): file \(7, 7, 3, 4\) vs "
                     r"backbone \(7, 7, 3, 8\)"):
    pretrained.load_into(dst, params, stats)
  with pytest.raises(ValueError, match="no 'backbone' sub-tree"):
    pretrained.load_into(dst, params["backbone"], stats)


# ------------------------------------------------------------- preprocessing


def test_preprocessing_recorded_and_pipeline_equivalent(tmp_path):
  path = str(tmp_path / "r18.safetensors")
  _write_safetensors(path, _resnet18_state_dict(width=4))
  dst = str(tmp_path / "r18.msgpack")
  pretrained.save(pretrained.convert(path, check=False), dst)
  assert pretrained.preprocessing_for(dst) == {
      "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
      "bgr": False, "scale": 1.0}
  assert pretrained.preprocessing_for(path)["scale"] == 1.0  # raw file too
  from dmlx.data import augment  # pylint: disable=g-import-not-at-top
  img = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), np.uint8)
  for arch in ("bn_inception", "googlenet", "resnet50"):
    prep = pretrained.PREPROCESSING[arch]
    want = np.zeros(img.shape)  # the formula, channel by channel
    for c in range(3):
      src = 2 - c if prep["bgr"] else c
      want[..., c] = (img[..., src] / 255.0 * prep["scale"] -
                      prep["mean"][c]) / prep["std"][c]
    norm = pretrained.data_normalisation(prep)
    got = np.asarray(augment.normalise(jnp.asarray(img), norm["mean"],
                                       norm["std"]))
    if norm["bgr"]:
      got = got[..., ::-1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  bgr = pretrained.PREPROCESSING["bn_inception"]
  assert bgr["bgr"] and bgr["scale"] == 255.0 and bgr["mean"][0] == 104.0


# -------------------------------------------------------------------- export


def test_export_workdir_round_trip(tmp_path):
  from dmlx.config import base_config  # pylint: disable=g-import-not-at-top
  from dmlx.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from dmlx.train.state import TrainState  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  config = base_config()
  config.model.backbone = "resnet18"
  config.model.backbone_kwargs = {"num_filters": 4}
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  _, params, stats = _embedding_template("resnet18", {"num_filters": 4}, 64)
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(
      lambda z: rng.normal(size=z.shape).astype(z.dtype), params)
  stats = jax.tree_util.tree_map(
      lambda z: rng.uniform(0.5, 1, z.shape).astype(z.dtype), stats)
  state = TrainState(step=jnp.array(12), params={"model": params, "method": {}},
                     batch_stats=stats, opt_state={}, method_state={},
                     rng=jax.random.PRNGKey(0))
  ckpt = Checkpointer(workdir)
  ckpt.save(12, state)
  ckpt.close()
  record = pretrained.export_workdir(workdir)
  assert record["arch"] == "resnet18" and record["source"].endswith("@12")
  assert record["preprocessing"]["mean"] == tuple(config.data.mean)
  dst = str(tmp_path / "warm.msgpack")
  pretrained.save(record, dst)
  _, fresh, fresh_stats = _embedding_template("resnet18", {"num_filters": 4},
                                              64)
  got, got_stats = pretrained.load_into(dst, fresh, fresh_stats)
  for a, b in zip(jax.tree_util.tree_leaves((got["backbone"], got_stats)),
                  jax.tree_util.tree_leaves((params["backbone"], stats))):
    np.testing.assert_array_equal(np.asarray(a), b)
  np.testing.assert_array_equal(got["embedding"]["kernel"], 0.0)  # head kept


# ------------------------------------------------- torch: the .pth reader


def test_pure_torch_reader_matches_torch_load(tmp_path):
  torch = pytest.importorskip("torch")
  import argparse  # pylint: disable=g-import-not-at-top
  base = torch.randn(6, 5)
  sd = collections.OrderedDict(
      a=torch.randn(3, 4), t=base.t(), v=base[2:4], h=torch.randn(4).half(),
      b16=torch.randn(3).bfloat16(), i=torch.arange(5), z=torch.zeros(0, 3),
      s=torch.tensor(2.5), flag=torch.tensor([True, False]),
      p=torch.nn.Parameter(torch.randn(2, 2)))
  path = str(tmp_path / "x.pth")
  for legacy in (False, True):  # zip layout (torch >= 1.6) and the old one
    torch.save({"state_dict": sd, "epoch": 3,
                "args": argparse.Namespace(lr=0.1)}, path,
               _use_new_zipfile_serialization=not legacy)
    pure = weight_files.read_torch(path, use_torch=False)
    ref = torch.load(path, weights_only=False)["state_dict"]
    assert sorted(pure) == sorted(ref)
    for k, v in ref.items():
      v = v.detach()
      want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
      assert pure[k].shape == want.shape, k
      np.testing.assert_array_equal(pure[k].astype(want.dtype), want)
    assert pure["b16"].dtype == ml_dtypes.bfloat16
  torch.save(torch.nn.Linear(2, 3), path)
  with pytest.raises(ValueError, match="pickled torch.nn.modules.linear"):
    weight_files.read_torch(path, use_torch=False)


# ------------------------------------------ torch: numerical equivalence

# arch -> (reference constructor, dmlx backbone kwargs, image size, dmlx
# feature the torch module returns)
_CASES = {
    "resnet18": (lambda n: n["ResNet"](n["Basic"], (2, 2, 2, 2), 8),
                 {"num_filters": 8}, 64, "stage4"),
    "resnet50": (lambda n: n["ResNet"](n["Bottleneck"], (3, 4, 6, 3), 8),
                 {"num_filters": 8}, 64, "stage4"),
    "vgg16_bn": (lambda n: n["VGG16BN"](0.125), {"num_filters": 8}, 32,
                 "pool5"),
    "googlenet": (lambda n: n["GoogLeNet"](0.125), {"width": 0.125}, 64,
                  "inception_5b"),
    "bn_inception": (lambda n: n["BNInception"](0.125), {"width": 0.125}, 64,
                     "inception_5b"),
    "alexnet": (lambda n: n["AlexNet"](0.125), {"width": 0.125}, 160, "fc7"),
}


_FAST_COMPILE = {"xla_backend_optimization_level": 0,
                 "xla_llvm_disable_expensive_passes": True}


@pytest.mark.parametrize("arch", list(_CASES))
def test_converted_backbone_matches_torch(arch, tmp_path):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  make, kwargs, size, layer = _CASES[arch]
  net = make(torch_reference.torch_nets(torch))
  with torch.no_grad():
    for m in net.modules():  # non-trivial BatchNorm statistics and affine
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.3, 0.3)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  net.eval()
  sd = net.state_dict()
  assert pretrained.detect_arch(sd) == arch
  files = {"pth": str(tmp_path / "w.pth")}
  torch.save(sd, files["pth"])
  if arch == "bn_inception":  # Cadene's file predates torch's zip layout
    files["legacy"] = str(tmp_path / "legacy.pth")
    torch.save(sd, files["legacy"], _use_new_zipfile_serialization=False)
  try:
    from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
    files["safetensors"] = str(tmp_path / "w.safetensors")
    save_file(sd, files["safetensors"])
  except ImportError:
    pass
  # Checked against the dmlx backbone once; the other formats must agree.
  records = {k: pretrained.convert(f, arch, kwargs, check=k == "pth")
             for k, f in files.items()}
  dst = str(tmp_path / "w.msgpack")
  pretrained.save(records["pth"], dst)
  flat = flax.traverse_util.flatten_dict(records["pth"]["params"])
  for k, r in records.items():  # every file format gives the same variables
    other = flax.traverse_util.flatten_dict(r["params"])
    assert sorted(other) == sorted(flat), k
    for key, value in flat.items():
      np.testing.assert_array_equal(other[key], value)

  model, params, stats = _embedding_template(arch, kwargs, size)
  params, stats = pretrained.load_into(dst, params, stats)
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(
      np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  if want.ndim == 4:
    want = want.transpose(0, 2, 3, 1)
  variables = {"params": params, "batch_stats": stats}
  forward = jax.jit(lambda v, x: model.apply(v, x)[layer]).lower(variables, x)
  # Unoptimised XLA code compiles 2x faster; the arithmetic is the same.
  forward = forward.compile(compiler_options=_FAST_COMPILE)
  got = np.asarray(forward(variables, x))
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-4,
                             atol=1e-4 * max(1.0, np.abs(want).max()))
  assert np.abs(want).max() > 1e-3  # the comparison is not of zeros
