"""Reliability drills (docs/reliability.md): preemption by SIGTERM, a save
killed half-way, an unusable work directory, and a few hundred random bad
config values, each failing with a message that names the key before
anything is compiled."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import configs
from dmlx.data import pipeline
from dmlx.train import checkpoint as ckpt_lib
from dmlx.train import loop
from dmlx.train import preemption
from dmlx.train import run as run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "baselines.py:dataset=digits,loss=triplet_semihard"


def _digits(**train):
  c = configs.load(DIGITS)
  c.train.progress = False
  c.train.tensorboard = False
  c.eval.untrained_baseline = False
  for k, v in train.items():
    setattr(c.train, k, v)
  return c


def _train_command(workdir, epochs):
  return [sys.executable, os.path.join(ROOT, "launch", "train.py"),
          f"--config=configs/{DIGITS}",
          f"--workdir={workdir}", f"--config.train.epochs={epochs}",
          "--config.train.progress=False", "--config.train.tensorboard=False",
          "--config.eval.untrained_baseline=False", "--config.train.log_every=1"]


def _train_lines(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum("train/loss" in line for line in f)


def test_sigterm_checkpoints_the_step_exits_75_and_the_rerun_matches(tmp_path):
  workdir = str(tmp_path / "run")
  epochs = 2
  proc = subprocess.Popen(_train_command(workdir, epochs), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  while _train_lines(workdir) < 3 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, proc.stdout.read()[-2000:]
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == preemption.EXIT_PREEMPTED, out[-2000:]
  log = open(os.path.join(workdir, "train.log")).read()
  step = int(log.split("SIGTERM: checkpointed step ")[1].split()[0])
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                 if s.isdigit())
  assert steps[-1] == step and step >= 3
  assert not os.path.exists(os.path.join(workdir, "final_metrics.json"))
  again = subprocess.run(_train_command(workdir, epochs), cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  assert f"restored step {step}" in open(os.path.join(workdir, "train.log")).read()
  resumed = json.load(open(os.path.join(workdir, "final_metrics.json")))
  full = loop.train_and_evaluate(_digits(epochs=epochs, log_every=1), str(tmp_path / "full"))
  assert resumed["trained"] == full["trained"]


_SAVER = textwrap.dedent("""
    import sys, numpy as np
    from dmlx.train.checkpoint import Checkpointer
    c = Checkpointer(sys.argv[1], max_to_keep=2)
    c.save(1, {"w": np.ones(4, np.float32)})
    print("saved 1", flush=True)
    c.save(2, {"w": np.full(1 << 26, 2.0, np.float32)})   # 256 MiB: a while to write
    print("saved 2", flush=True)
""")


def test_a_save_killed_midway_never_replaces_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  ckpts = os.path.join(workdir, "checkpoints")
  proc = subprocess.Popen([sys.executable, "-c", _SAVER, workdir], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT})
  assert proc.stdout.readline().strip() == "saved 1"
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if any(not n.isdigit() for n in os.listdir(ckpts)):   # step 2's temporary folder
      break
    time.sleep(0.002)
  proc.kill()                                               # SIGKILL mid-write
  proc.wait()
  checkpointer = ckpt_lib.Checkpointer(workdir)
  assert checkpointer.latest_step() == 1
  restored = checkpointer.restore({"w": np.zeros(4, np.float32)})
  np.testing.assert_array_equal(restored["w"], 1.0)
  checkpointer.close()


def test_a_work_directory_that_cannot_be_written_fails_before_data_loads(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  c = _digits()
  with pytest.raises(ckpt_lib.WorkdirError, match="a_file.*not writable"):
    run_lib.build(c, str(blocker / "run"), quiet=True)


def test_a_full_disk_fails_before_training(tmp_path, monkeypatch):
  import shutil  # pylint: disable=g-import-not-at-top
  real = shutil.disk_usage
  monkeypatch.setattr(ckpt_lib.shutil, "disk_usage",
                      lambda p: real(p)._replace(free=1 << 20))
  with pytest.raises(ckpt_lib.WorkdirError, match=r"1\.0 MiB free.*max_checkpoints"):
    loop.train_and_evaluate(_digits(), str(tmp_path))
  assert not os.listdir(tmp_path / "checkpoints")   # no step was taken


# ---------------------------------------------------------------- config fuzz

FUZZ_CONFIGS = ("default.py", DIGITS, "magnet.py:dataset=procedural")
_SKIP = ("options", "backbone_kwargs", "kwargs", "index_kwargs")


def _leaves(c, prefix=""):
  for k in c.keys():
    v = c[k]
    if hasattr(v, "keys"):
      if k not in _SKIP:
        yield from _leaves(v, prefix + k + ".")
    else:
      yield prefix + k, v


def _bad_values(v):
  if isinstance(v, bool):
    return ["maybe", 3]
  if isinstance(v, int):
    return [-1, 0, -100, 10**9, "x", 1.5]
  if isinstance(v, float):
    return [-1.0, 0.0, math.nan, math.inf, 1e9, "x", 2.0]
  if isinstance(v, str):
    return ["no_such_name", "", 5]
  if isinstance(v, tuple):
    return [(), (-1,), ("a",), 5, (0.5, 0.2)]
  return []


def _cases(n, seed=0):
  cases = []
  for name in FUZZ_CONFIGS:
    for key, value in _leaves(configs.load(name)):
      cases.extend((name, key, bad) for bad in _bad_values(value))
  random.Random(seed).shuffle(cases)
  return cases[:n]


def _set(c, key, value):
  node = c
  *path, leaf = key.split(".")
  for part in path:
    node = node[part]
  node[leaf] = value


def _names_key(message, key):
  leaf = key.split(".")[-1]
  return key in message or leaf in message


@pytest.fixture
def cached_data(monkeypatch):
  """Each data config loads once (the fuzz changes one key at a time)."""
  cache = {}
  real = pipeline.load_splits

  def load(cfg, log=None):
    key = cfg.to_json_best_effort(sort_keys=True)
    if key not in cache:
      cache[key] = real(cfg, log)
    return cache[key]

  monkeypatch.setattr(run_lib.pipeline, "load_splits", load)


def test_config_fuzz_every_bad_value_is_refused_naming_its_key(tmp_path, cached_data):
  """A few hundred random single-key overrides: each is refused when set
  (a wrong type) or by ``run.build`` (before compiling) with a message that
  names the key -- or builds a run that is checked to take a step in
  :func:`test_config_fuzz_accepted_values_train` (slow)."""
  outcome = {"refused": 0, "built": 0}
  bad = []
  for name, key, value in _cases(300):
    c = configs.load(name)
    try:
      _set(c, key, value)
    except TypeError as e:
      assert _names_key(str(e), key), (name, key, value, str(e))
      outcome["refused"] += 1
      continue
    try:
      run = run_lib.build(c, str(tmp_path / "w"), quiet=True)
      run.checkpointer.close()
      run.writer.close()
      outcome["built"] += 1
    except (ValueError, TypeError, KeyError, OSError) as e:
      if not _names_key(str(e), key):
        bad.append((name, key, value, f"{type(e).__name__}: {e}"[:300]))
      outcome["refused"] += 1
  assert not bad, "\n".join(map(str, bad))
  assert outcome["refused"] > 100 and outcome["built"] > 50, outcome


@pytest.mark.slow
def test_config_fuzz_accepted_values_train(tmp_path, cached_data):
  """Overrides that ``build`` accepts take a training step (finite or a
  NaN report naming the step), never a crash from inside JAX."""
  taken = 0
  for i, (name, key, value) in enumerate(_cases(300)):
    c = configs.load(name)
    try:
      _set(c, key, value)
      run = run_lib.build(c, str(tmp_path / f"b{i}"), quiet=True)
      run.checkpointer.close()
      run.writer.close()
    except (ValueError, TypeError, KeyError, OSError):
      continue
    if taken >= 40:
      break
    c.train.epochs, c.train.steps_per_epoch = 1, 1
    c.eval.untrained_baseline, c.train.progress, c.train.tensorboard = False, False, False
    c.eval.report = False
    try:
      loop.train_and_evaluate(c, str(tmp_path / f"r{i}"))
    except FloatingPointError as e:
      assert "at step" in str(e)
    except (ValueError, OSError) as e:
      assert _names_key(str(e), key), (name, key, value, str(e))
    taken += 1
  assert taken >= 20


# ------------------------------------------------------------------ bad data


def _folder(tmp_path, per_class=3):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  root = tmp_path / "images"
  for c in ("cat", "dog"):
    (root / c).mkdir(parents=True)
    for i in range(per_class):
      Image.fromarray(rng.integers(0, 255, (12, 12, 3), np.uint8)).save(root / c / f"{i}.png")
  return root


def _folder_config(root, policy="error"):
  c = configs.load(DIGITS)
  c.data.name, c.data.data_dir, c.data.image_size = "folder", str(root), 8
  c.data.on_bad_image = policy
  return c.data


def test_a_truncated_image_is_fatal_or_skipped_and_counted(tmp_path):
  root = _folder(tmp_path)
  bad = root / "dog" / "1.png"
  bad.write_bytes(bad.read_bytes()[:40])                    # truncated
  with pytest.raises(ValueError, match=r"dog/1\.png.*on_bad_image='skip'"):
    pipeline.load_dataset(_folder_config(root))
  lines = []
  ds = pipeline.load_dataset(_folder_config(root, "skip"), lines.append)
  assert len(ds) == 5 and ds.class_names == ("cat", "dog")
  assert np.bincount(ds.labels).tolist() == [3, 2]
  assert "skipped 1 images" in lines[0] and "dog/1.png" in lines[0]
  c = _digits()
  c.data.on_bad_image = "ignore"
  with pytest.raises(ValueError, match="data.on_bad_image"):
    run_lib.build(c, str(tmp_path / "w"), quiet=True)


def test_empty_class_folders_and_duplicate_files_are_reported(tmp_path, caplog):
  root = _folder(tmp_path)
  (root / "empty_class").mkdir()
  (root / "dog" / "copy.png").write_bytes((root / "cat" / "0.png").read_bytes())
  lines = []
  with caplog.at_level("WARNING"):
    ds = pipeline.load_dataset(_folder_config(root), lines.append)
  assert ds.class_names == ("cat", "dog") and len(ds) == 7
  assert any("empty_class" in r.getMessage() for r in caplog.records)
  assert any("1 files have the same bytes" in l and "copy.png" in l for l in lines)


def test_labels_outside_the_classes_are_refused():
  from dmlx.data import base  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="label 2 out of range for 2 classes"):
    base.Dataset(images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.array([0, 2]),
                 class_names=("a", "b"))


def test_a_class_smaller_than_k_repeats_images_and_says_so():
  from dmlx.data import samplers  # pylint: disable=g-import-not-at-top
  labels = np.array([0] * 8 + [1] * 8 + [2])                # class 2: one image
  s = samplers.PKSampler(labels, classes_per_batch=3, images_per_class=4, seed=0)
  assert s.short_classes == 1
  rows = np.concatenate([s.batch(i) for i in range(s.steps_per_epoch)])
  assert set(rows.tolist()) == set(range(17))                # every example visited
  assert (rows == 16).sum() >= 4                              # the one image, repeated
