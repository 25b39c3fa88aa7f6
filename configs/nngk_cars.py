"""NNGK on Cars196: zero-shot metric learning (Meyer et al., ICIP 2018,
Section 3.1, Table 1).

  python launch/train.py --config=configs/nngk_cars.py \\
      --config.data.data_dir=/path/to/cars196 \\
      --config.model.pretrained=weights/googlenet_imagenet.msgpack

The first 98 classes train, the other 98 (never seen in training) test:
Recall@1/2/4/8, NMI and MAP@R. Everything, including the paper's hyper-
parameters, is defined in configs/nngk.py (argument 'cars'). model.pretrained
is empty by default (random initial weights): point it at ImageNet weights
converted for dmlx. The optional argument is the embedding dimension (64, 128,
256, 512, 1024; it also sets σ), e.g. --config=configs/nngk_cars.py:512.
"""
import os
import runpy


def get_config(arg: str | None = None):
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "nngk.py"))
  return shared["get_config"](f"cars,{arg}" if arg else "cars")
