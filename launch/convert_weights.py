"""Converts ImageNet weights (or a trained dmlx run) for ``config.model.pretrained``.

  # torchvision / timm / Cadene checkpoints (arch detected when omitted):
  python launch/convert_weights.py --arch=resnet50 \
      --src=resnet50-11ad3fa6.pth --dst=weights/resnet50_imagenet.msgpack
  python launch/convert_weights.py --arch=bn_inception \
      --src=bninception-239d2248.pth --dst=weights/bn_inception_imagenet.msgpack

  # warm start from a trained dmlx run (e.g. a briefly trained softmax one):
  python launch/convert_weights.py --from_workdir=workdirs/softmax_warmup \
      --dst=weights/warm.msgpack

then train with ``--config.model.pretrained=weights/resnet50_imagenet.msgpack``.
The conversion checks every tensor against the dmlx backbone built with
``--backbone_kwargs`` (JSON, e.g. '{"width": 0.5}'). Kept short on purpose:
the work is in ``dmlx.models.pretrained`` (see docs/pretrained.md).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "Checkpoint file: .pth, .safetensors, .npz.")
flags.DEFINE_string("arch", None, "resnet18|resnet34|resnet50|resnet101|"
                    "vgg16_bn|googlenet|bn_inception|alexnet (default: "
                    "detected from the tensor names).")
flags.DEFINE_string("from_workdir", None, "Export this dmlx run's backbone "
                    "instead of converting --src.")
flags.DEFINE_integer("step", None, "With --from_workdir: checkpoint step "
                     "(default: the latest).")
flags.DEFINE_string("backbone_kwargs", "{}", "JSON kwargs of the dmlx "
                    "backbone the weights must fit.")
flags.DEFINE_bool("check", True, "Check tensors against the dmlx backbone.")
flags.DEFINE_string("dst", None, "Output msgpack file.")
flags.mark_flags_as_required(["dst"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  import jax  # pylint: disable=g-import-not-at-top
  from dmlx.models import pretrained  # pylint: disable=g-import-not-at-top
  if bool(FLAGS.src) == bool(FLAGS.from_workdir):
    raise app.UsageError("give exactly one of --src and --from_workdir")
  if FLAGS.from_workdir:
    record = pretrained.export_workdir(FLAGS.from_workdir, FLAGS.step)
  else:
    record = pretrained.convert(FLAGS.src, FLAGS.arch,
                                json.loads(FLAGS.backbone_kwargs),
                                check=FLAGS.check)
  pretrained.save(record, FLAGS.dst)
  n = sum(v.size for v in jax.tree_util.tree_leaves(record["params"]))
  print(f"{record['arch']}: {n:,} parameters from {record['source']} -> "
        f"{FLAGS.dst}\npreprocessing: {record['preprocessing']}")


if __name__ == "__main__":
  app.run(main)
