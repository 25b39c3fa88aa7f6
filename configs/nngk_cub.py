"""NNGK on CUB-200-2011: zero-shot metric learning (Meyer et al., ICIP 2018,
Section 3.1, Table 2).

  python launch/train.py --config=configs/nngk_cub.py \\
      --config.data.data_dir=/path/to/CUB_200_2011 \\
      --config.model.pretrained=weights/googlenet_imagenet.msgpack

The first 100 classes train, the other 100 (never seen in training) test:
Recall@1/2/4/8, NMI and MAP@R. Everything, including the paper's hyper-
parameters, is defined in configs/nngk.py (argument 'cub'). model.pretrained is
empty by default (random initial weights): point it at ImageNet weights
converted for dmlx. The optional argument is the embedding dimension (64, 128,
256, 512, 1024; it also sets σ), e.g. --config=configs/nngk_cub.py:512.
"""
import os
import runpy


def get_config(arg: str | None = None):
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "nngk.py"))
  return shared["get_config"](f"cub,{arg}" if arg else "cub")
