"""NNGK on CUB-200-2011: zero-shot metric learning (Meyer et al., ICIP 2018,
Section 3.1, Table 2).

  python launch/train.py --config=configs/nngk_cub.py \\
      --config.data.data_dir=/path/to/CUB_200_2011 \\
      --config.model.pretrained=weights/googlenet_imagenet.msgpack

The first 100 classes train, the other 100 (never seen in training) test:
Recall@1/2/4/8, NMI and MAP@R. Everything, including the paper's hyper-
parameters, is defined in configs/nngk.py (``dataset=cub``). model.pretrained
is empty by default (random initial weights): point it at ImageNet weights
converted for dmlx. Arguments as configs/nngk.py's: ``dims`` (64, 128, 256,
512, 1024; it also sets σ), ``cls``, ``runlocal``, e.g.
--config=configs/nngk_cub.py:dims=512.
"""
from configs import nngk

VARIANTS = ("", "dims=512", "cls")


def get_config(arg: str | None = None):
  """NNGK on CUB-200-2011 (``arg``: more configs/nngk.py arguments)."""
  if arg and "dataset" in arg:
    raise ValueError("configs/nngk_cub.py is CUB-200-2011; use configs/nngk.py "
                     f"for another dataset (got {arg!r}).")
  return nngk.get_config("dataset=cub" + (f",{arg}" if arg else ""))
