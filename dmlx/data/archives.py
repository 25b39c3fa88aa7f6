"""Loaders for the DML datasets in the layout of their original archives.

Each ``load_<name>(data_dir, *, image_size, ...)`` reads the dataset either
unpacked under ``data_dir`` (or one sub-folder of it) or straight from a
``.zip`` there, decodes and resizes every image (``dmlx.data.images``) and
returns ONE :class:`~dmlx.data.base.Dataset` holding all images, classes in
their official order, with the papers' standard split recorded per example
in the integer attribute ``"split"`` (codes ``dmlx.data.splits.SPLIT_NAMES``):

=================  ===========================================================
cub200             first 100 classes train, last 100 test (Song et al. 2016)
cars196            classes 1-98 train, 99-196 test
sop                Ebay_train.txt (11,318 classes) / Ebay_test.txt (11,316)
inshop             train / query / gallery (list_eval_partition.txt)
flowers102         official train / val / test (setid.mat)
pets               trainval ("train") / test
dogs               official train / test lists
omniglot           images_background* train, images_evaluation test
tinyimagenet       train, and val when val/val_annotations.txt exists
=================  ===========================================================

``dmlx.data.splits.standard_split(ds)`` turns that attribute into named
datasets; ``zero_shot_split`` / ``split_by_attribute`` give other splits.
Every loader takes ``channels`` (3 RGB, 1 grey), ``resize`` ('shorter_crop' or
'square'), ``cache_dir`` (``.npz`` cache, keyed by source, size and options)
and ``num_workers`` (decode threads).

The loaders live in ``archives_fine_grained`` (cub200, cars196, sop, inshop),
``archives_classification`` (flowers102, pets, dogs) and ``archives_folders``
(omniglot, tinyimagenet, image folders), their shared helpers in
``archives_common``; this module gathers them under their one import path.
"""
# pylint: disable=unused-import
from dmlx.data.archives_classification import load_dogs
from dmlx.data.archives_classification import load_flowers102
from dmlx.data.archives_classification import load_pets
from dmlx.data.archives_common import PathLike
from dmlx.data.archives_common import TEST
from dmlx.data.archives_common import TRAIN
from dmlx.data.archives_common import VAL
from dmlx.data.archives_common import _Source
from dmlx.data.archives_common import _decode
from dmlx.data.archives_common import _ints
from dmlx.data.archives_common import _key
from dmlx.data.archives_common import _loadmat
from dmlx.data.archives_common import _locate
from dmlx.data.archives_common import _missing
from dmlx.data.archives_common import _options
from dmlx.data.archives_common import _strings
from dmlx.data.archives_common import _table
from dmlx.data.archives_fine_grained import _inshop_images
from dmlx.data.archives_fine_grained import load_cars196
from dmlx.data.archives_fine_grained import load_cub200
from dmlx.data.archives_fine_grained import load_inshop
from dmlx.data.archives_fine_grained import load_sop
from dmlx.data.archives_folders import IMAGE_EXTENSIONS
from dmlx.data.archives_folders import OMNIGLOT_ARCHIVES
from dmlx.data.archives_folders import _OMNIGLOT_FILE
from dmlx.data.archives_folders import _omniglot_sources
from dmlx.data.archives_folders import load_image_folder
from dmlx.data.archives_folders import load_omniglot
from dmlx.data.archives_folders import load_tinyimagenet
