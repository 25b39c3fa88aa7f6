"""NNGK on CUB-200-2011: classification (Meyer et al., ICIP 2018, Section 3.2,
Table 3).

  python launch/train.py --config=configs/nngk_cls_cub.py \\
      --config.data.data_dir=/path/to/CUB_200_2011 \\
      --config.model.pretrained=weights/resnet50_imagenet.msgpack

The official train / test lists, images cropped to their bounding boxes; the
test accuracy of the eq. 3 classifier is printed as nngk_accuracy. Everything,
including the paper's hyper-parameters, is defined in configs/nngk.py (argument
'cub,cls'). model.pretrained is empty by default (random initial weights):
point it at ImageNet weights converted for dmlx.
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "nngk.py"))
  return shared["get_config"]("cub,cls")
