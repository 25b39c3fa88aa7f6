"""Tables and plots of ``experiments/magnet.py`` (Rippel et al., ICLR 2016,
section 4 at small scale): printing the measured tables and saving the PNGs
next to ``magnet.json``."""
from __future__ import annotations

import os

import numpy as np

import common  # pylint: disable=g-import-not-at-top

ATTRIBUTES = ("colour", "orientation", "scale", "background")
NEIGHBOURHOODS = (1, 2, 4, 8, 16, 32, 64)


def print_tables(results: dict) -> None:
  """Prints every table the run produced."""
  if "classification" in results:
    c = results["classification"]
    print("\nClassification test error (same backbone, batch, steps):")
    print(common.table(c["errors"]))
    if c.get("magnet_evaluate"):
      print("Magnet Method.evaluate (running sigma^2): " + ", ".join(
          f"{k}={v:.4f}" for k, v in c["magnet_evaluate"].items()))
    print("\nError vs training steps:")
    rows = {}
    for method, curve in c["curves"].items():
      for key in ("knn_error", "knc_error"):
        rows[f"{method} {key[:3]}"] = {f"step {s}": e[key]
                                       for s, e in curve.items()}
    print(common.table(rows))
    print("\nEfficiency (Fig. 5): " + ", ".join(
        f"{k}={v}" for k, v in c["efficiency"].items()))
  if "attributes" in results:
    a = results["attributes"]
    first = next(iter(a.values()))
    for view, title in (("by_size", "all neighbours"),
                        ("other_class", "neighbours of other classes only")):
      print(f"\nAttribute concentration, {title} (fraction of the n nearest "
            "test neighbours sharing the attribute, mean over the 4):")
      rows = {m: {f"n={n}": float(np.mean([v[view][i] for v in r.values()]))
                  for i, n in enumerate(NEIGHBOURHOODS)} for m, r in a.items()}
      rows["chance"] = {f"n={n}": float(np.mean(
          [v["chance"] for v in first.values()])) for n in NEIGHBOURHOODS}
      print(common.table(rows))
      i8 = NEIGHBOURHOODS.index(8)
      rows = {m: {k: v[view][i8] for k, v in r.items()} for m, r in a.items()}
      rows["chance"] = {k: v["chance"] for k, v in first.items()}
      print(f"per attribute at n=8 ({title}):")
      print(common.table(rows))
  if "cluster_purity" in results:
    print("\nAttribute purity of per-class K-means clusters of the training "
          "embeddings (random = same cluster sizes, attributes shuffled):")
    print(common.table({m: {f"{a} {k}": v[k] for a, v in r.items()
                            for k in ("purity", "random")}
                        for m, r in results["cluster_purity"].items()}))
  if "hierarchy" in results:
    print("\nHierarchy recovery (trained on pairs of classes collapsed):")
    print(common.table(results["hierarchy"]))


def save_plots(results: dict, out_dir: str, suffix: str = "") -> list[str]:
  """PNG plots of the curves, attribute concentration and hierarchy bars."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  paths = []
  if "classification" in results:
    c = results["classification"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (method, curve) in enumerate(c["curves"].items()):
      steps = sorted(curve, key=int)
      for key, style in (("knn_error", "-"), ("knc_error", "--")):
        ax.plot([int(s) for s in steps], [curve[s][key] for s in steps],
                style, color=f"C{i}", marker="o", label=f"{method} {key[:3]}")
    ax.axhline(c["efficiency"]["triplet_final_knn_error"], color="grey",
               lw=0.8, ls=":", label="triplet final kNN")
    ax.set_xlabel("training steps")
    ax.set_ylabel("test error")
    ax.legend(fontsize=7)
    ax.set_title("Training efficiency (cf. Rippel et al. Fig. 5)")
    paths.append(_save(fig, out_dir, f"magnet_efficiency{suffix}.png"))
  if "attributes" in results:
    a = results["attributes"]
    first = next(iter(a.values()))
    names = ATTRIBUTES + ("mean",)
    fig, axes = plt.subplots(2, len(names), figsize=(16, 6), squeeze=False)
    for row, (view, title) in enumerate((("by_size", "all"),
                                         ("other_class", "other-class"))):
      for method, r in a.items():
        for ax, name in zip(axes[row], names):
          values = (r[name][view] if name != "mean" else
                    np.mean([r[n][view] for n in ATTRIBUTES], axis=0))
          ax.plot(NEIGHBOURHOODS, values, marker="o", label=method)
      for ax, name in zip(axes[row], names):
        chance = (first[name]["chance"] if name != "mean" else
                  np.mean([first[n]["chance"] for n in ATTRIBUTES]))
        ax.axhline(chance, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{name} ({title} neighbours)", fontsize=9)
        ax.set_xlabel("neighbourhood size")
      axes[row][0].set_ylabel("fraction sharing attribute")
    axes[0][-1].legend(fontsize=7)
    paths.append(_save(fig, out_dir, f"magnet_attributes{suffix}.png"))
  if "hierarchy" in results:
    h = results["hierarchy"]
    keys = ("fine_1nn_accuracy", "fine_10nn_accuracy",
            "within_pair_1nn_accuracy", "fine_nmi", "coarse_10nn_accuracy")
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(h)
    for i, (method, r) in enumerate(h.items()):
      ax.bar(np.arange(len(keys)) + i * width, [r[k] for k in keys], width,
             label=method)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    ax.set_xticklabels([k.replace("_accuracy", "") for k in keys], fontsize=8)
    ax.set_title("Hierarchy recovery (cf. Rippel et al. Fig. 4f)")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir, f"magnet_hierarchy{suffix}.png"))
  return paths


def _save(fig, out_dir: str, name: str) -> str:
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path
