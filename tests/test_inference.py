"""Using a trained model (dmlx.inference): the embedder computes the
trainer's own features from a work directory alone, from arrays, PIL images,
files, folders and zips; the gallery index equals exact search and survives
a save; few-shot episodes and the run's figures come out of training; the
commands work end to end."""
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

import configs
from dmlx import inference
from dmlx.eval import few_shot as few_shot_lib
from dmlx.eval import recall_at_k
from dmlx.train import figures
from dmlx.train import loop
from dmlx.train.restore import restore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  c = configs.load("default.py:runlocal")
  c.train.progress = False
  c.train.tensorboard = False
  c.eval.report = True
  c.eval.few_shot.ways = 5
  c.eval.few_shot.episodes = 200
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  c = _config()
  final = loop.train_and_evaluate(c, workdir)
  restored = restore(c, workdir)
  test = restored.run.test
  features = restored.embed()["embedding"]
  restored.close()
  return workdir, c, final, test, features


@pytest.fixture(scope="module")
def embedder(trained):
  return inference.Embedder.from_workdir(trained[0])


def test_embedder_from_workdir_alone_equals_trainer_features(trained, embedder):
  workdir, _, final, test, features = trained
  got = embedder(test.images)
  np.testing.assert_array_equal(got, features)
  # ... and so reproduces the run's own Recall@1 on its test classes.
  r1 = recall_at_k(got, test.labels, ks=(1,))[1]
  assert r1 == pytest.approx(final["trained"]["test"]["embedding"]["recall@1"], abs=1e-9)
  assert embedder.step == final["steps"]
  assert {"embedding", "pooled"} <= set(embedder.layers)


def test_files_folders_zips_and_pil_images_decode_like_the_dataset(trained, embedder, tmp_path):
  _, _, _, test, features = trained
  rows = np.arange(0, len(test), 37)
  folder = str(tmp_path / "gallery")
  names = inference.inputs.write_images(test.images[rows], test.labels[rows],
                                        test.class_names, folder, embedder.decode)
  got = embedder.embed(folder)
  order = np.argsort(names)               # read back sorted by path
  np.testing.assert_allclose(got.vectors, features[rows][order], rtol=1e-5, atol=1e-5)
  assert got.class_names and np.array_equal(
      np.array(got.class_names)[got.labels],
      np.array([n.split("/")[0] for n in np.array(names)[order]]))
  archive = str(tmp_path / "gallery.zip")
  with zipfile.ZipFile(archive, "w") as z:     # a wrapping top folder is skipped
    for n in names:
      z.write(os.path.join(folder, n), "top/" + n)
  from_zip = embedder.embed(archive)
  np.testing.assert_allclose(from_zip.vectors, got.vectors, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(from_zip.labels, got.labels)
  files = [os.path.join(folder, n) for n in sorted(names)[:3]]
  np.testing.assert_allclose(embedder(files), got.vectors[:3], rtol=1e-5, atol=1e-5)
  pil = [Image.open(f) for f in files]
  np.testing.assert_allclose(embedder(pil), got.vectors[:3], rtol=1e-5, atol=1e-5)
  # Another size is resized as a file of that size would be.
  big = np.stack([np.asarray(Image.fromarray(im).resize((56, 56))) for im in test.images[:2]])
  assert embedder(big).shape == (2, features.shape[1])


def test_bad_inputs_name_what_is_wrong(embedder, tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    embedder(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="No image files"):
    embedder(str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="float32"):
    embedder(np.zeros((2, 28, 28, 3), np.float32))
  with pytest.raises(FileNotFoundError, match="config.json"):
    inference.Embedder.from_workdir(str(tmp_path))


def test_embeddings_round_trip(trained, embedder, tmp_path):
  e = embedder.embed(trained[3].images[:5])
  path = e.save(str(tmp_path / "e"))
  back = inference.Embeddings.load(path)
  np.testing.assert_array_equal(back.vectors, e.vectors)
  assert back.names == e.names and back.metric == e.metric and back.model == e.model


def _exact(queries, gallery, k, cosine=False):
  if cosine:
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    d = 1.0 - queries @ gallery.T
  else:
    d = ((queries[:, None] - gallery[None]) ** 2).sum(-1)
  ids = np.argsort(d, axis=1, kind="stable")[:, :k]
  return ids, np.take_along_axis(d, ids, 1)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_index_search_equals_exact_search_and_survives_a_save(metric, tmp_path):
  rng = np.random.default_rng(0)
  g = rng.normal(size=(300, 16)).astype(np.float32)
  q = rng.normal(size=(20, 16)).astype(np.float32)
  gallery = inference.Embeddings(g, tuple(f"g{i}" for i in range(300)),
                                 labels=np.arange(300) % 7, metric=metric)
  index = inference.GalleryIndex.build(gallery)
  assert index.index_type == "flat"            # exact at this size
  hits = index.search(q, k=5)
  ids, dist = _exact(q, g, 5, metric == "cosine")
  np.testing.assert_array_equal(hits.ids, ids)
  np.testing.assert_allclose(hits.distances, dist, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(hits.labels, (np.arange(300) % 7)[ids])
  assert hits.names[0][0] == f"g{ids[0, 0]}"
  back = inference.GalleryIndex.load(index.save(str(tmp_path / "index")))
  np.testing.assert_array_equal(back.search(q, k=5).ids, hits.ids)
  own = index.search(g, k=3, exclude_self=True)
  assert not (own.ids == np.arange(300)[:, None]).any()
  np.testing.assert_array_equal(own.ids, _exact(g, g, 4, metric == "cosine")[0][:, 1:])
  short = index.search(q, k=400)               # more than the gallery holds
  assert (short.ids[:, 300:] == -1).all() and np.isinf(short.distances[:, 300:]).all()


def test_approximate_indexes_find_most_exact_neighbours():
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(30, 16)) * 4
  g = (centres[rng.integers(30, size=2000)] + rng.normal(size=(2000, 16))).astype(np.float32)
  gallery = inference.Embeddings(g, tuple(map(str, range(2000))))
  exact, _ = _exact(g[:50], g, 5)
  for kind in ("hnsw", "ivf"):
    ids = inference.GalleryIndex.build(gallery, index_type=kind).search(g[:50], 5).ids
    found = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, exact)])
    assert found > 0.8, (kind, found)
  assert inference.index.choose_index_type(10**5) == "hnsw"
  assert inference.index.choose_index_type(10**5, gpu=True) == "ivf"


def test_few_shot_is_reported_and_matches_the_library(trained):
  _, c, final, test, features = trained
  got = final["method"]["fewshot_5way1shot"]
  episodes = few_shot_lib.make_episodes(test.labels, n_way=5, k_shot=1, n_query=1,
                                        episodes=200, seed=0)
  want = few_shot_lib.few_shot_accuracy(features, test.labels, episodes)
  assert got == pytest.approx(want.accuracy) and final["method"][
      "fewshot_5way1shot_ci95"] == pytest.approx(want.ci95)


def test_impossible_few_shot_fails_before_training(tmp_path):
  c = _config()
  c.eval.few_shot.ways = 30                    # 24 test classes
  with pytest.raises(ValueError, match="config.eval.few_shot"):
    loop.train_and_evaluate(c, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")
  c.eval.few_shot.ways = 1
  with pytest.raises(ValueError, match="few_shot.ways"):
    loop.train_and_evaluate(c, str(tmp_path / "b"))


def test_run_writes_its_figures(trained):
  workdir = trained[0]
  for name in figures.NAMES:
    path = os.path.join(workdir, name)
    assert os.path.getsize(path) > 1000, name
    with Image.open(path) as im:
      assert im.format == "PNG" and im.size[0] > 100


def _launch(script, *args):
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_commands_export_embed_and_search(trained, tmp_path):
  workdir = trained[0]
  images = str(tmp_path / "images")
  assert "wrote 720 images of 24 classes" in _launch(
      "export_images.py", "--config=configs/default.py:runlocal", "--split=test",
      f"--out={images}")
  npz = str(tmp_path / "test.npz")
  assert "embedded 720 images, 24 classes" in _launch(
      "embed.py", f"--workdir={workdir}", f"--images={images}", f"--out={npz}")
  png = str(tmp_path / "search.png")
  out = _launch("search.py", f"--gallery={npz}", "--k=4", f"--out={png}",
                f"--save_index={tmp_path / 'index'}")
  r1 = float(out.split("Recall@1 ")[1].split()[0])
  assert r1 == pytest.approx(trained[2]["trained"]["test"]["embedding"]["recall@1"], abs=1e-3)
  with Image.open(png) as im:
    assert im.size[0] > 200
  from_saved = inference.GalleryIndex.load(str(tmp_path / "index"))
  assert len(from_saved) == 720 and from_saved.gallery.class_names


def test_few_shot_evaluator_reports_within_group_episodes():
  import types  # pylint: disable=g-import-not-at-top
  from dmlx.data import base  # pylint: disable=g-import-not-at-top
  from dmlx.train import evaluators  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(12), 4)
  alphabet = labels // 6                                   # two groups of 6 classes
  test = base.Dataset(images=np.zeros((48, 2, 2, 1), np.uint8), labels=labels,
                      class_names=tuple(map(str, range(12))),
                      attributes={"alphabet": alphabet})
  feats = (np.eye(12)[labels] * 5 + rng.normal(size=(48, 12)) * 0.1).astype(np.float32)
  config = configs.load("default.py")
  config.eval.few_shot.update(ways=5, episodes=50, group="alphabet")
  ctx = types.SimpleNamespace(config=config, test=test, test_features={"embedding": feats},
                              log=lambda s: None)
  out = evaluators.few_shot(ctx)
  assert out["fewshot_5way1shot"] == 1.0 and out["fewshot_5way1shot_within_alphabet"] == 1.0
  config.eval.few_shot.group = "drawer"
  with pytest.raises(ValueError, match="few_shot.group='drawer'.*alphabet"):
    evaluators.check_few_shot(config.eval, test)
  config.eval.few_shot.update(group="alphabet", ways=7)       # a group has only 6 classes
  with pytest.raises(ValueError, match="ways=7.*group alphabet"):
    evaluators.check_few_shot(config.eval, test)
