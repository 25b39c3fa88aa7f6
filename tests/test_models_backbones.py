"""Tests for dmlx.models backbones (ResNet, VGG, GoogLeNet, BN-Inception) and layers.

Full-size networks are only traced (``jax.eval_shape``: shapes and parameter
counts against the published architectures); running and jitting is done at
tiny widths and 32-64 px inputs so the file stays fast on 2 CPU cores.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from dmlx.models import layers, pooling
from dmlx.models.inception import BNInception, GoogLeNet
from dmlx.models.resnet import ResNet18, ResNet50
from dmlx.models.vgg import TORCHVISION_VGG16_BN_INDEX, VGG16BN

# ------------------------------------------------------------------- helpers


def _conv_ref(x, kernel, bias, strides, pads):
  """Plain-loop NumPy cross-correlation (what a conv layer computes)."""
  x = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
  kh, kw, _, cout = kernel.shape
  ho = (x.shape[1] - kh) // strides[0] + 1
  wo = (x.shape[2] - kw) // strides[1] + 1
  y = np.zeros((x.shape[0], ho, wo, cout))
  for b in range(x.shape[0]):
    for i in range(ho):
      for j in range(wo):
        patch = x[b, i * strides[0]:i * strides[0] + kh,
                  j * strides[1]:j * strides[1] + kw]
        y[b, i, j] = np.tensordot(patch, kernel, axes=3) + bias
  return y


def _pool_ref(x, k, s, p, ceil_mode, op, count_include_pad=True):
  """Plain-loop PyTorch pooling semantics (MaxPool2d / AvgPool2d)."""
  _, h, w, _ = x.shape

  def out_size(n):
    if ceil_mode:
      o = -(-(n + 2 * p - k) // s) + 1
      return o - 1 if (o - 1) * s >= n + p else o
    return (n + 2 * p - k) // s + 1

  ho, wo = out_size(h), out_size(w)
  y = np.zeros((x.shape[0], ho, wo, x.shape[3]))
  for i in range(ho):
    for j in range(wo):
      h0, w0 = i * s - p, j * s - p
      h1, w1 = min(h0 + k, h + p), min(w0 + k, w + p)
      win = x[:, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w)]
      if op == "max":
        y[:, i, j] = win.max(axis=(1, 2))
      else:
        n = (h1 - h0) * (w1 - w0) if count_include_pad else (
            win.shape[1] * win.shape[2])
        y[:, i, j] = win.sum(axis=(1, 2)) / n
  return y


def _key(seed):
  # 'rbg' keys: XLA:CPU compiles threefry sampling very slowly (seconds per
  # initialiser), which would dominate this file's run time.
  return jax.random.key(seed, impl="rbg")


def _fill(shapes, seed=0):
  """Concrete variables for traced shapes without running the initialisers.

  He-scaled Gaussian kernels, unit BN scale/var, small random biases/means.
  """
  rng = np.random.RandomState(seed)

  def value(path, s):
    name = path[-1].key
    if name == "kernel":
      std = np.sqrt(2.0 / np.prod(s.shape[:-1]))
      return jnp.asarray(rng.randn(*s.shape) * std, s.dtype)
    if name in ("scale", "var"):
      return jnp.asarray(1.0 + 0.1 * rng.rand(*s.shape), s.dtype)
    return jnp.asarray(0.1 * rng.randn(*s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(value, shapes)


def _jit(f, *args):
  """Compiles ``f`` for ``args`` at XLA optimisation level 0 and runs it.

  Halves XLA:CPU compile time of these many-layer graphs; the numerics the
  tests check do not depend on it.
  """
  compiled = jax.jit(f).lower(*args).compile(
      {"xla_backend_optimization_level": 0})
  return compiled(*args)


def _n_params(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def _paths(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(k.key for k in path) for path, _ in flat}


# --------------------------------------------------------------- layers.Conv

CONV_CASES = [  # (input side, kernel, stride, padding)
    (1, 3, 1, "SAME"),
    (2, 3, 1, 1),
    (4, 3, 2, "SAME"),  # SAME + stride 2 pads (0, 1) on even inputs
    (4, 3, 2, 1),  # torchvision-style explicit padding
    (5, 3, 2, "VALID"),
    (3, 1, 1, 0),
    (5, 3, (2, 1), ((2, 0), (1, 2))),  # asymmetric explicit padding
    (4, 7, 2, 3),
]


@pytest.mark.parametrize("size,kernel,stride,padding", CONV_CASES)
def test_im2col_conv_matches_nn_conv_and_grads(size, kernel, stride, padding):
  x = jax.random.normal(_key(0), (2, size, size + 1, 5))
  ref = nn.Conv(6, (kernel, kernel), stride, padding=padding)
  params = ref.init(_key(1), x)
  params = jax.tree_util.tree_map(  # non-zero bias so it is tested too
      lambda a: a + 0.1 if a.ndim == 1 else a, params)
  ours = layers.Conv(6, kernel, stride, padding=padding, im2col_max_size=99)
  # Same parameter tree: checkpoints are interchangeable.
  assert (jax.tree_util.tree_map(jnp.shape, ours.init(_key(1), x))
          == jax.tree_util.tree_map(jnp.shape, params))
  # The forced path really is im2col (no convolution primitive).
  jaxpr = str(jax.make_jaxpr(ours.apply)(params, x))
  assert "conv_general_dilated" not in jaxpr

  def out_and_grads(module):
    f = lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
    return module.apply(params, x), jax.grad(f, argnums=(0, 1))(params, x)

  (y, g), (y_ref, g_ref) = jax.jit(
      lambda: (out_and_grads(ours), out_and_grads(ref)))()
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_im2col_conv_matches_numpy_loop():
  x = np.random.RandomState(0).randn(2, 3, 4, 3).astype(np.float32)
  k = np.random.RandomState(1).randn(3, 3, 3, 4).astype(np.float32)
  pads = [(1, 0), (2, 1)]
  y = layers.im2col_conv2d(jnp.asarray(x), jnp.asarray(k), (2, 1), pads)
  np.testing.assert_allclose(y, _conv_ref(x, k, 0.0, (2, 1), pads),
                             rtol=1e-5, atol=1e-5)


def test_im2col_conv_check_grads():
  x = jax.random.normal(_key(2), (1, 2, 3, 2))
  k = jax.random.normal(_key(3), (3, 3, 2, 2))
  f = jax.jit(lambda x, k: layers.im2col_conv2d(x, k, (1, 1), [(1, 1), (1, 1)]))
  jax.test_util.check_grads(f, (x, k), order=1, modes=["rev"], eps=1e-2)


def test_conv_switches_path_on_output_size():
  x = jnp.ones((1, 8, 8, 2))
  for strides, max_size, expect_conv in [(1, 3, True), (4, 3, False),
                                         (4, 0, True), (1, 8, False)]:
    m = layers.Conv(3, 3, strides, padding=1, im2col_max_size=max_size)
    p = m.init(_key(0), x)
    has_conv = "conv_general_dilated" in str(jax.make_jaxpr(m.apply)(p, x))
    assert has_conv == expect_conv, (strides, max_size)


def test_pointwise_conv_is_a_matmul_unless_disabled():
  x = jnp.ones((2, 16, 16, 4))
  for strides, max_size, expect_conv in [(1, 4, False), (2, 4, False),
                                         (1, 0, True)]:
    m = layers.Conv(8, 1, strides, padding=0, im2col_max_size=max_size)
    p = m.init(_key(0), x)
    has_conv = "conv_general_dilated" in str(jax.make_jaxpr(m.apply)(p, x))
    assert has_conv == expect_conv, (strides, max_size)


@pytest.mark.parametrize("batch,chunk,stride", [(7, 3, 1), (8, 8, 2), (5, 1, 2),
                                                (6, 0, 1), (5, 0, 2)])
def test_sliced_kernel_gradient_equals_xla_gradient(batch, chunk, stride):
  """xla_conv2d: same output and input gradient as lax, and the kernel
  gradient summed over batch slices (chunk > 0) or as one matmul per tap
  (chunk 0) equals the whole-batch one."""
  x = jax.random.normal(_key(4), (batch, 9, 8, 3))
  w = jax.random.normal(_key(5), (3, 3, 3, 4))
  pads = ((1, 1), (0, 2))

  def lax_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def sliced(x, w):
    return layers.xla_conv2d(x, w, (stride, stride), pads, None, chunk)

  np.testing.assert_allclose(sliced(x, w), lax_conv(x, w), rtol=1e-6)
  loss = lambda f: (lambda x, w: jnp.sum(jnp.sin(f(x, w))))
  got = jax.jit(jax.grad(loss(sliced), argnums=(0, 1)))(x, w)
  want = jax.jit(jax.grad(loss(lax_conv), argnums=(0, 1)))(x, w)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  jax.test_util.check_grads(sliced, (x, w), order=1, modes=["rev"], eps=1e-2)


def test_kernel_gradient_plan_by_shape():
  # ResNet-18 / 50 body convs: one matmul per tap.
  assert layers.kernel_gradient_plan(64, (16, 16), 64) == 0
  assert layers.kernel_gradient_plan(32, (8, 8), 256) == 0
  # The 3-channel stem: XLA's gradient in batch slices.
  assert layers.kernel_gradient_plan(64, (32, 32), 3) == 8
  # Small convolutions (the tests' SmallCNN): XLA's own gradient.
  assert layers.kernel_gradient_plan(16, (12, 12), 32) is None
  assert layers.kernel_gradient_plan(4, (4, 4), 512) is None


def test_conv_slices_the_kernel_gradient_on_cpu_only_when_it_helps():
  assert layers.dw_chunk_images(64, (32, 32)) == 8
  assert layers.dw_chunk_images(64, (64, 64)) == 2
  assert layers.dw_chunk_images(4, (2, 2)) == 4      # one slice: plain lax
  assert layers.dw_chunk_images(64, (200, 200)) == 1
  assert layers.dw_chunk_images(16, (12, 12)) == 16   # small: XLA's own


@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_gradient_matches_reduce_window(ties):
  """The slice-maximum max pool has reduce_window's gradient, including
  ceil_mode and padding, and with ties (inputs drawn from 3 values) gives
  each window's gradient to its first maximum, as reduce_window and PyTorch
  do."""
  x = jax.random.normal(_key(6), (2, 9, 8, 3))
  if ties:
    x = jnp.round(x).clip(-1, 1)
  for k, s, p, ceil in [(3, 2, 1, False), (3, 2, 0, True), (2, 2, 0, False),
                        (3, 1, 1, True), (2, 3, 0, False), (3, 3, 1, True)]:
    _, pads = pooling._pool_pads(x, k, s, p, ceil)[2:]
    pads = [(lo, max(hi, 0)) for lo, hi in pads]  # reduce_window's gradient
    # fails on negative padding (floor mode, rows left unused)
    ref = lambda x: jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1),
        [(0, 0)] + pads + [(0, 0)])
    ours = lambda x: layers.max_pool(x, k, s, p, ceil)
    np.testing.assert_array_equal(ours(x), ref(x))
    w = jax.random.normal(_key(7), ref(x).shape)
    g = lambda f: jax.jit(jax.grad(lambda x: jnp.sum(w * f(x))))(x)
    # Up to the order in which overlapping windows' shares are added; a tie
    # given to the wrong input differs by a whole share.
    np.testing.assert_allclose(g(ours), g(ref), rtol=1e-6, atol=1e-6)
    if ties:  # the case the test is about does occur
      assert len(np.unique(np.asarray(x))) == 3
  jax.test_util.check_grads(lambda x: layers.max_pool(x, 3, 2, 1),
                            (jax.random.normal(_key(8), (1, 6, 5, 2)),),
                            order=1, modes=["rev"], eps=1e-3)


def test_conv_bad_padding_raises():
  with pytest.raises(ValueError, match="CIRCULAR"):
    layers.Conv(2, 3, padding="CIRCULAR").init(_key(0),
                                               jnp.ones((1, 4, 4, 1)))
  with pytest.raises(ValueError, match="does not fit"):
    layers.Conv(2, 5, padding="VALID").init(_key(0),
                                            jnp.ones((1, 3, 3, 1)))


# ------------------------------------------------------------------ pooling


@pytest.mark.parametrize("size,k,s,p,ceil_mode", [
    (7, 3, 2, 0, True), (8, 3, 2, 0, True), (8, 3, 2, 1, False),
    (5, 3, 1, 1, True), (4, 2, 2, 0, True), (6, 3, 2, 1, True)])
def test_pools_match_pytorch_semantics(size, k, s, p, ceil_mode):
  x = np.random.RandomState(0).randn(2, size, size + 1, 3).astype(np.float32)
  np.testing.assert_allclose(
      layers.max_pool(jnp.asarray(x), k, s, p, ceil_mode),
      _pool_ref(x, k, s, p, ceil_mode, "max"), rtol=1e-6)
  for include in (True, False):
    np.testing.assert_allclose(
        layers.avg_pool(jnp.asarray(x), k, s, p, ceil_mode, include),
        _pool_ref(x, k, s, p, ceil_mode, "avg", include), rtol=1e-5,
        atol=1e-6)


def test_pools_differentiable_and_global_pool():
  x = jax.random.normal(_key(0), (2, 5, 5, 3))
  g = jax.jit(jax.grad(lambda x: jnp.sum(layers.max_pool(x, 3, 2, 1, True))
                       + jnp.sum(layers.avg_pool(x, 3, 1, 1, True))))(x)
  assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))
  np.testing.assert_allclose(layers.global_pool(x, "max"),
                             np.asarray(x).max(axis=(1, 2)))
  np.testing.assert_allclose(layers.global_pool(x, "avg"),
                             np.asarray(x).mean(axis=(1, 2)), rtol=1e-6)
  with pytest.raises(ValueError, match="gem"):
    layers.global_pool(x, "gem")


# ------------------------------------------- full-size architectures (traced)


def _full_shapes(model, size=224):
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, _key(0), x)
  out = jax.eval_shape(model.apply, variables, x)
  return variables, {k: v.shape[1:] for k, v in out.items()}


def test_resnet50_full_size_matches_torchvision():
  variables, shapes = _full_shapes(ResNet50())
  assert list(shapes) == ["stem", "stage1", "stage2", "stage3", "stage4",
                          "pooled"]
  assert shapes == {"stem": (56, 56, 64), "stage1": (56, 56, 256),
                    "stage2": (28, 28, 512), "stage3": (14, 14, 1024),
                    "stage4": (7, 7, 2048), "pooled": (2048,)}
  # torchvision resnet50: 25,557,032 parameters minus fc (2048*1000 + 1000).
  assert _n_params(variables["params"]) == 25_557_032 - 2_049_000
  paths = _paths(variables["params"])
  assert {"conv1/kernel", "bn1/scale", "layer1_0/conv3/kernel",
          "layer2_0/downsample_conv/kernel", "layer4_2/bn3/bias"} <= paths
  assert "layer1_0/conv1/bias" not in paths
  assert "layer3_5/bn2/mean" in _paths(variables["batch_stats"])


def test_vgg16bn_full_size_and_vo_hays_names():
  variables, shapes = _full_shapes(VGG16BN())
  expected = {}
  for b, (n, c, s) in enumerate([(2, 64, 224), (2, 128, 112), (3, 256, 56),
                                 (3, 512, 28), (3, 512, 14)], start=1):
    for i in range(1, n + 1):
      expected[f"conv{b}_{i}"] = (s, s, c)
      if b == 5:
        expected[f"pool5_{i}"] = (512,)
    expected[f"pool{b}"] = (s // 2, s // 2, c)
  expected["pooled"] = (512,)
  assert shapes == expected
  assert list(shapes)[-8:] == ["conv5_1", "pool5_1", "conv5_2", "pool5_2",
                               "conv5_3", "pool5_3", "pool5", "pooled"]
  # torchvision vgg16_bn.features: 14,714,688 conv + 8,448 BN parameters.
  assert _n_params(variables["params"]) == 14_723_136
  assert {"conv5_3/kernel", "conv5_3/bias", "bn5_3/scale"} <= _paths(
      variables["params"])
  assert (TORCHVISION_VGG16_BN_INDEX["conv1_1"],
          TORCHVISION_VGG16_BN_INDEX["bn1_1"],
          TORCHVISION_VGG16_BN_INDEX["conv2_1"],
          TORCHVISION_VGG16_BN_INDEX["conv5_3"]) == (0, 1, 7, 40)


def test_googlenet_full_size_matches_torchvision():
  variables, shapes = _full_shapes(GoogLeNet())
  chans = {"3a": 256, "3b": 480, "4a": 512, "4b": 512, "4c": 512, "4d": 528,
           "4e": 832, "5a": 832, "5b": 1024}
  for name, c in chans.items():
    side = {"3": 28, "4": 14, "5": 7}[name[0]]
    assert shapes[f"inception_{name}"] == (side, side, c), name
  assert shapes["conv1"] == (112, 112, 64) and shapes["pool4"] == (7, 7, 832)
  assert shapes["pooled"] == (1024,)
  # torchvision googlenet (no aux): 6,624,904 parameters minus fc.
  assert _n_params(variables["params"]) == 6_624_904 - 1_025_000
  assert {"conv1/conv/kernel", "inception3a/branch4_1/bn/scale",
          "inception5b/branch3_1/conv/kernel"} <= _paths(variables["params"])


def test_bninception_full_size_matches_caffe_model():
  variables, shapes = _full_shapes(BNInception())
  chans = {"3a": 256, "3b": 320, "3c": 576, "4a": 576, "4b": 576, "4c": 608,
           "4d": 608, "4e": 1056, "5a": 1024, "5b": 1024}
  sides = {"3a": 28, "3b": 28, "3c": 14, "4e": 7, "5a": 7, "5b": 7}
  for name, c in chans.items():
    side = sides.get(name, 14)
    assert shapes[f"inception_{name}"] == (side, side, c), name
  assert shapes["pooled"] == (1024,)
  # Cadene's bninception: 11,295,240 parameters minus last_linear.
  assert _n_params(variables["params"]) == 11_295_240 - 1_025_000
  assert {"conv1_7x7_s2/bias", "conv2_3x3_reduce_bn/scale",
          "inception_3c/double_3x3_2_bn/scale", "inception_5b/pool_proj/kernel"
          } <= _paths(variables["params"])
  assert "inception_3c/pool_proj/kernel" not in _paths(variables["params"])


# ------------------------------------------- tiny networks: run, BN, jit

TINY = {  # name: (model, input side, expected spatial sides per feature)
    "resnet18_cifar": (ResNet18(num_filters=4, small_inputs=True), 32,
                       {"stem": 32, "stage1": 32, "stage2": 16, "stage3": 8,
                        "stage4": 4}),
    "resnet50": (ResNet50(num_filters=4), 64,
                 {"stem": 16, "stage1": 16, "stage2": 8, "stage3": 4,
                  "stage4": 2}),
    "vgg16bn": (VGG16BN(num_filters=4), 32,
                {"conv1_2": 32, "pool1": 16, "conv3_3": 8, "pool4": 2,
                 "conv5_3": 2, "pool5": 1}),
    "googlenet": (GoogLeNet(width=0.125), 64,
                  {"conv1": 32, "pool1": 16, "pool2": 8, "inception_3b": 8,
                   "pool3": 4, "inception_4e": 4, "pool4": 2,
                   "inception_5b": 2}),
    "bninception": (BNInception(width=0.125), 64,
                    {"conv1": 32, "pool1": 16, "pool2": 8, "inception_3b": 8,
                     "inception_3c": 4, "inception_4e": 2,
                     "inception_5b": 2}),
}


# The two Inception-style nets take ~40 s each to compile: slow suite (their
# converted weights are checked against torch in tests/test_pretrained.py).
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in ("googlenet", "bninception") else n
    for n in TINY])
def test_tiny_backbone_runs_jitted_with_batch_stats(name):
  model, side, sides = TINY[name]
  x = jnp.asarray(np.random.RandomState(0).randn(2, side, side, 3),
                  jnp.float32)
  variables = _fill(jax.eval_shape(model.init, _key(1), x))
  frozen = model.clone(frozen_bn=True)

  def run(variables, x):
    ev = model.apply(variables, x)
    tr, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    fr, same = frozen.apply(variables, x, train=True, mutable=["batch_stats"])
    return ev, tr, new["batch_stats"], fr, same["batch_stats"]

  ev, tr, new_stats, fr, same_stats = _jit(run, variables, x)
  # Documented keys, shapes, 'pooled' last and equal to the pooled last map.
  assert list(ev)[-1] == "pooled"
  assert set(sides) <= set(ev)
  for key, s in sides.items():
    assert ev[key].shape[:3] == (2, s, s), key
  last = list(ev.values())[-2 if name != "vgg16bn" else -4]
  assert ev["pooled"].shape == (2, last.shape[-1])
  want = layers.global_pool(last, model.pooling)
  np.testing.assert_allclose(ev["pooled"], want, rtol=1e-5, atol=1e-6)
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in ev.values())
  # train=True normalises with batch statistics and moves the running ones.
  old = jax.tree_util.tree_leaves(variables["batch_stats"])
  assert all(not np.allclose(a, b) for a, b in
             zip(old, jax.tree_util.tree_leaves(new_stats)))
  assert not np.allclose(tr["pooled"], ev["pooled"])
  # frozen_bn: running statistics used and left untouched, even in training.
  for a, b in zip(old, jax.tree_util.tree_leaves(same_stats)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(fr["pooled"], ev["pooled"], rtol=1e-5, atol=1e-6)


def test_im2col_path_does_not_change_a_network():
  x = jax.random.normal(_key(0), (2, 32, 32, 3))
  model = ResNet18(num_filters=4)  # ImageNet stem: stage3 2x2, stage4 1x1
  variables = _fill(jax.eval_shape(model.init, _key(1), x))
  plain = model.clone(im2col_max_size=0)
  a, b = _jit(lambda v, x: (model.apply(v, x), plain.apply(v, x)),
              variables, x)
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_variants_keys_and_bad_input():
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  small = VGG16BN(num_filters=4, small_inputs=True, pooling="avg")
  out = jax.eval_shape(small.apply,
                       jax.eval_shape(small.init, _key(0), x), x)
  assert "pool1" not in out and out["conv5_3"].shape == (2, 4, 4, 32)
  net = GoogLeNet(width=0.125, small_inputs=True)
  out = jax.eval_shape(net.apply,
                       jax.eval_shape(net.init, _key(0), x), x)
  assert out["conv1"].shape[1:3] == (32, 32)
  with pytest.raises(ValueError, match="pooling"):
    jax.eval_shape(ResNet18(pooling="sum").init, _key(0), x)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    jax.eval_shape(BNInception().init, _key(0),
                   jax.ShapeDtypeStruct((32, 32, 3), jnp.float32))


@pytest.mark.parametrize("slice_positions", [1, 150, 10_000])
def test_tap_kernel_gradient_over_image_slices_equals_xla_gradient(
    monkeypatch, slice_positions):
  """The per-tap kernel gradient, summed over slices of 1 image, of 2 (a
  scan over 3 slices of a batch of 6) or in one piece, equals XLA's."""
  from dmlx.models import conv_grad
  monkeypatch.setattr(conv_grad, "TAP_DW_SLICE_POSITIONS", slice_positions)
  x = jax.random.normal(_key(7), (6, 9, 8, 5))
  g = jax.random.normal(_key(8), (6, 9, 8, 4))
  pads = ((1, 1), (1, 1))
  w = jnp.zeros((3, 3, 5, 4))
  _, vjp = jax.vjp(lambda w: jax.lax.conv_general_dilated(
      x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")), w)
  np.testing.assert_allclose(
      jax.jit(conv_grad.tap_kernel_gradient, static_argnums=(2, 3, 4))(
          x, g, (3, 3), (1, 1), pads), vjp(g)[0], rtol=1e-4, atol=1e-5)
