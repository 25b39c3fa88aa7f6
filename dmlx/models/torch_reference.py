"""PyTorch reference modules of dmlx's backbones, with torchvision's names.

:func:`torch_nets` returns the classes (ResNet with its Basic / Bottleneck
blocks, VGG16-BN, GoogLeNet, BN-Inception with Cadene's Caffe names,
AlexNet, SmallCNN). They serve two jobs and nothing else: the converter's
equivalence tests (``tests/test_pretrained.py``: a converted torch state dict
must give dmlx's features) and the train-step benchmark
(``benchmarks/train_step.py``: the same network trained by PyTorch). Their
``forward`` returns the feature map (or vector) the matching dmlx feature
names. ``torch`` is passed in, so importing this module needs no torch.
"""
from __future__ import annotations


def torch_nets(torch) -> dict:
  """The reference classes, by name (construct, then call .eval() or .train())."""
  nn, F = torch.nn, torch.nn.functional

  def scaled(c, w):
    return max(1, int(round(c * w)))

  class Basic(nn.Module):
    expansion = 1

    def __init__(self, inp, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.downsample = None
      if stride != 1 or inp != planes:
        self.downsample = nn.Sequential(
            nn.Conv2d(inp, planes, 1, stride, bias=False),
            nn.BatchNorm2d(planes))

    def forward(self, x):
      y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
      return F.relu(y + (x if self.downsample is None else self.downsample(x)))

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inp, planes, stride):
      super().__init__()
      out = planes * 4
      self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(out)
      self.downsample = None
      if stride != 1 or inp != out:
        self.downsample = nn.Sequential(
            nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = F.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return F.relu(y + (x if self.downsample is None else self.downsample(x)))

  class ResNet(nn.Module):
    def __init__(self, block, stages, width):
      super().__init__()
      self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      inp = width
      for s, n in enumerate(stages):
        blocks = []
        for b in range(n):
          blocks.append(block(inp, width * 2**s, 2 if s and not b else 1))
          inp = width * 2**s * block.expansion
        setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
      self.fc = nn.Linear(inp, 10)

    def forward(self, x):
      x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
      for s in range(1, 5):
        x = getattr(self, f"layer{s}")(x)
      return x

  class VGG16BN(nn.Module):
    def __init__(self, width):
      super().__init__()
      cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512,
             "M", 512, 512, 512, "M"]
      mods, inp = [], 3
      for v in cfg:
        if v == "M":
          mods.append(nn.MaxPool2d(2, 2))
        else:
          v = scaled(v, width)
          mods += [nn.Conv2d(inp, v, 3, padding=1), nn.BatchNorm2d(v),
                   nn.ReLU()]
          inp = v
      self.features = nn.Sequential(*mods)
      self.classifier = nn.Sequential(nn.Linear(inp * 49, 16), nn.ReLU(),
                                      nn.Dropout(), nn.Linear(16, 10))

    def forward(self, x):
      return self.features(x)

  class BasicConv2d(nn.Module):
    def __init__(self, inp, out, **kw):
      super().__init__()
      self.conv = nn.Conv2d(inp, out, bias=False, **kw)
      self.bn = nn.BatchNorm2d(out, eps=0.001)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  class Inception(nn.Module):
    def __init__(self, inp, c1, c3r, c3, c5r, c5, cp):
      super().__init__()
      self.branch1 = BasicConv2d(inp, c1, kernel_size=1)
      self.branch2 = nn.Sequential(BasicConv2d(inp, c3r, kernel_size=1),
                                   BasicConv2d(c3r, c3, kernel_size=3,
                                               padding=1))
      self.branch3 = nn.Sequential(BasicConv2d(inp, c5r, kernel_size=1),
                                   BasicConv2d(c5r, c5, kernel_size=3,
                                               padding=1))
      self.branch4 = nn.Sequential(
          nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
          BasicConv2d(inp, cp, kernel_size=1))
      self.out = c1 + c3 + c5 + cp

    def forward(self, x):
      return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x),
                        self.branch4(x)], 1)

  class Aux(nn.Module):  # GoogLeNet's auxiliary classifier: ignored
    def __init__(self, inp):
      super().__init__()
      self.conv = BasicConv2d(inp, 4, kernel_size=1)
      self.fc1 = nn.Linear(4, 3)

  class GoogLeNet(nn.Module):
    blocks = (("3a", (64, 96, 128, 16, 32, 32)),
              ("3b", (128, 128, 192, 32, 96, 64)),
              ("4a", (192, 96, 208, 16, 48, 64)),
              ("4b", (160, 112, 224, 24, 64, 64)),
              ("4c", (128, 128, 256, 24, 64, 64)),
              ("4d", (112, 144, 288, 32, 64, 64)),
              ("4e", (256, 160, 320, 32, 128, 128)),
              ("5a", (256, 160, 320, 32, 128, 128)),
              ("5b", (384, 192, 384, 48, 128, 128)))

    def __init__(self, width):
      super().__init__()
      c = lambda v: scaled(v, width)  # pylint: disable=unnecessary-lambda-assignment
      self.conv1 = BasicConv2d(3, c(64), kernel_size=7, stride=2, padding=3)
      self.conv2 = BasicConv2d(c(64), c(64), kernel_size=1)
      self.conv3 = BasicConv2d(c(64), c(192), kernel_size=3, padding=1)
      inp = c(192)
      for name, ch in self.blocks:
        block = Inception(inp, *[c(v) for v in ch])
        setattr(self, f"inception{name}", block)
        inp = block.out
      self.aux1, self.aux2 = Aux(c(512)), Aux(c(528))
      self.fc = nn.Linear(inp, 10)

    def forward(self, x):
      def pool(y, k=3):
        return F.max_pool2d(y, k, 2, ceil_mode=True)

      x = pool(self.conv1(x))
      x = pool(self.conv3(self.conv2(x)))
      for name, _ in self.blocks:
        if name == "4a":
          x = pool(x)
        if name == "5a":
          x = pool(x, 2)
        x = getattr(self, f"inception{name}")(x)
      return x

  class BNInception(nn.Module):
    """Cadene's pretrainedmodels.bninception layout (Caffe names)."""
    blocks = (("3a", (64, 64, 64, 64, 96, 32), "avg", 1),
              ("3b", (64, 64, 96, 64, 96, 64), "avg", 1),
              ("3c", (0, 128, 160, 64, 96, 0), "max", 2),
              ("4a", (224, 64, 96, 96, 128, 128), "avg", 1),
              ("4b", (192, 96, 128, 96, 128, 128), "avg", 1),
              ("4c", (160, 128, 160, 128, 160, 128), "avg", 1),
              ("4d", (96, 128, 192, 160, 192, 128), "avg", 1),
              ("4e", (0, 128, 192, 192, 256, 0), "max", 2),
              ("5a", (352, 192, 320, 160, 224, 128), "avg", 1),
              ("5b", (352, 192, 320, 192, 224, 128), "max", 1))

    def __init__(self, width):
      super().__init__()
      c = lambda v: scaled(v, width) if v else 0  # pylint: disable=unnecessary-lambda-assignment
      self._cbr("conv1_7x7_s2", 3, c(64), 7, 2)
      self._cbr("conv2_3x3_reduce", c(64), c(64), 1, 1)
      self._cbr("conv2_3x3", c(64), c(192), 3, 1)
      inp = c(192)
      for name, ch, _, s in self.blocks:
        c1, c3r, c3, cdr, cd, cp = [c(v) for v in ch]
        p = f"inception_{name}_"
        if c1:
          self._cbr(p + "1x1", inp, c1, 1, 1)
        self._cbr(p + "3x3_reduce", inp, c3r, 1, 1)
        self._cbr(p + "3x3", c3r, c3, 3, s)
        self._cbr(p + "double_3x3_reduce", inp, cdr, 1, 1)
        self._cbr(p + "double_3x3_1", cdr, cd, 3, 1)
        self._cbr(p + "double_3x3_2", cd, cd, 3, s)
        if cp:
          self._cbr(p + "pool_proj", inp, cp, 1, 1)
        inp = c1 + c3 + cd + (cp if cp else inp)
      self.last_linear = nn.Linear(inp, 10)

    def _cbr(self, name, inp, out, k, s):
      setattr(self, name, nn.Conv2d(inp, out, k, s, k // 2))
      setattr(self, name + "_bn", nn.BatchNorm2d(out))

    def _run(self, name, x):
      return F.relu(getattr(self, name + "_bn")(getattr(self, name)(x)))

    def forward(self, x):
      x = F.max_pool2d(self._run("conv1_7x7_s2", x), 3, 2, ceil_mode=True)
      x = self._run("conv2_3x3", self._run("conv2_3x3_reduce", x))
      x = F.max_pool2d(x, 3, 2, ceil_mode=True)
      for name, ch, pool, s in self.blocks:
        p = f"inception_{name}_"
        outs = [self._run(p + "1x1", x)] if ch[0] else []
        outs.append(self._run(p + "3x3", self._run(p + "3x3_reduce", x)))
        y = self._run(p + "double_3x3_1", self._run(p + "double_3x3_reduce",
                                                     x))
        outs.append(self._run(p + "double_3x3_2", y))
        if s == 2:
          y = F.max_pool2d(x, 3, 2, ceil_mode=True)
        elif pool == "avg":
          y = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True)
        else:
          y = F.max_pool2d(x, 3, 1, 1, ceil_mode=True)
        outs.append(self._run(p + "pool_proj", y) if ch[5] else y)
        x = torch.cat(outs, 1)
      return x

  class AlexNet(nn.Module):
    def __init__(self, width):
      super().__init__()
      c = lambda v: scaled(v, width)  # pylint: disable=unnecessary-lambda-assignment
      self.features = nn.Sequential(
          nn.Conv2d(3, c(64), 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
          nn.Conv2d(c(64), c(192), 5, padding=2), nn.ReLU(),
          nn.MaxPool2d(3, 2),
          nn.Conv2d(c(192), c(384), 3, padding=1), nn.ReLU(),
          nn.Conv2d(c(384), c(256), 3, padding=1), nn.ReLU(),
          nn.Conv2d(c(256), c(256), 3, padding=1), nn.ReLU(),
          nn.MaxPool2d(3, 2))
      self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
      self.classifier = nn.Sequential(
          nn.Dropout(), nn.Linear(c(256) * 36, c(4096)), nn.ReLU(),
          nn.Dropout(), nn.Linear(c(4096), c(4096)), nn.ReLU(),
          nn.Linear(c(4096), 10))

    def forward(self, x):  # fc7, NNGK's embedding (linear, no ReLU)
      x = torch.flatten(self.avgpool(self.features(x)), 1)
      return self.classifier[:5](x)

  class SmallCNN(nn.Module):
    """dmlx.models.small_cnn.SmallCNN: conv3x3-BN-ReLU-maxpool blocks, then
    global average pooling (returns the pooled vector)."""

    def __init__(self, width=32, num_blocks=3, widen=True):
      super().__init__()
      mods, inp = [], 3
      for i in range(num_blocks):
        ch = width * (2 ** min(i, 2) if widen else 1)
        mods += [nn.Conv2d(inp, ch, 3, padding=1, bias=False),
                 nn.BatchNorm2d(ch, momentum=0.1), nn.ReLU(),
                 nn.MaxPool2d(2, 2)]
        inp = ch
      self.features = nn.Sequential(*mods)
      self.out = inp

    def forward(self, x):
      return self.features(x).mean(dim=(2, 3))

  return dict(ResNet=ResNet, Basic=Basic, Bottleneck=Bottleneck,
              VGG16BN=VGG16BN, GoogLeNet=GoogLeNet, BNInception=BNInception,
              AlexNet=AlexNet, SmallCNN=SmallCNN)
