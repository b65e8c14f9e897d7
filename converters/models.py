"""Reference models used by the tests, the demo and the benchmarks.

Every constructor takes a `seed` and gives the same weights for the same seed (the
global torch RNG is forked, so building a model does not disturb the caller's RNG).
The models are returned in eval mode.

- `lenet_300_100()`: the 784-300-100-10 MLP of Deep Compression (input (N,1,28,28)).
- `lenet5()`: Caffe's LeNet-5 (conv 20 5x5, max-pool 2, conv 50 5x5, max-pool 2,
  fc 500 + ReLU, fc 10); input (N,1,28,28). Like Caffe's, it has no ReLU after the convs.
- `resnet_cifar()`: a small CIFAR ResNet (BasicBlocks, BatchNorm, residual adds, 1x1-conv
  downsample shortcuts), about 0.35M parameters; input (N,3,32,32).
- `mobilenet_v2_cifar()`: MobileNetV2-style inverted residuals for CIFAR; input (N,3,32,32).

`randomize_batchnorm(model, seed)` gives every BatchNorm random statistics and affine
parameters, so that a test of BatchNorm folding actually tests something.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "LeNet300100",
    "LeNet5",
    "BasicBlock",
    "ResNetCifar",
    "InvertedResidual",
    "MobileNetV2Cifar",
    "lenet_300_100",
    "lenet5",
    "resnet_cifar",
    "mobilenet_v2_cifar",
    "randomize_batchnorm",
    "count_parameters",
    "pretrained_arrays",
    "load_arrays",
]


class LeNet300100(nn.Module):
    """784-300-100-10 fully connected network with ReLU."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet: conv(20,5x5) pool2 conv(50,5x5) pool2 fc500 relu fc10."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        return self.fc2(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN, residual add, ReLU; 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.downsample = nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.downsample(x)
        return F.relu(out)


class ResNetCifar(nn.Module):
    def __init__(self, widths: Sequence[int] = (16, 32, 64), blocks: Sequence[int] = (3, 3, 3),
                 num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers = []
        in_planes = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stage = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(BasicBlock(in_planes, w, stride))
                in_planes = w
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class InvertedResidual(nn.Module):
    """1x1 expand + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1 project + BN (+ residual)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_residual = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


# (expand ratio t, output channels c, repeats n, first stride s): MobileNetV2's table,
# with the CIFAR changes (stride 1 stem and first stages) and trimmed for a 32x32 input.
MOBILENET_V2_CIFAR_CONFIG: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 3, 2),
    (6, 96, 2, 1),
    (6, 160, 2, 2),
)


class MobileNetV2Cifar(nn.Module):
    def __init__(self, config=MOBILENET_V2_CIFAR_CONFIG, stem: int = 32, last: int = 640,
                 num_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem),
            nn.ReLU6(inplace=True))
        blocks = []
        inp = stem
        for t, c, n, s in config:
            for i in range(n):
                blocks.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Conv2d(inp, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.head(self.features(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        x = x.flatten(1)
        return self.classifier(self.dropout(x))


def _build(cls, seed: int, *args, **kwargs) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(*args, **kwargs)
    return model.eval()


def lenet_300_100(seed: int = 0, num_classes: int = 10, pretrained: bool = False) -> LeNet300100:
    """LeNet-300-100; pretrained=True: the MNIST-trained weights the package ships."""
    if pretrained:
        if num_classes != 10:
            raise ValueError("the pretrained LeNet-300-100 has 10 classes")
        model = LeNet300100()
        load_arrays(model, pretrained_arrays("lenet_300_100_mnist"))
        return model.eval()
    return _build(LeNet300100, seed, num_classes)


def lenet5(seed: int = 0, num_classes: int = 10) -> LeNet5:
    return _build(LeNet5, seed, num_classes)


def resnet_cifar(seed: int = 0, num_classes: int = 10, widths=(16, 32, 64),
                 blocks=(3, 3, 4)) -> ResNetCifar:
    """ResNet-20-like CIFAR network (about 0.35M parameters with the defaults)."""
    return _build(ResNetCifar, seed, widths, blocks, num_classes)


def mobilenet_v2_cifar(seed: int = 0, num_classes: int = 10) -> MobileNetV2Cifar:
    return _build(MobileNetV2Cifar, seed, num_classes=num_classes)


def randomize_batchnorm(model: nn.Module, seed: int = 0, data: Optional[torch.Tensor] = None,
                        gamma_range: Tuple[float, float] = (0.5, 1.5)) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics (in place).

    gamma ~ U(gamma_range), beta ~ N(0, 0.2). Without `data`, running_mean ~ N(0, 0.1)
    and running_var ~ U(0.5, 2). With `data` (a batch of inputs), the running statistics
    are first measured on it (one forward pass in train mode, so each BatchNorm sees the
    already randomized layers before it), then perturbed: mean + N(0, 0.1) * std and
    var * U(0.7, 1.4). The measured version keeps a deep network's signal alive (with
    arbitrary statistics the activations shrink layer by layer and the output hardly
    depends on the input, which would make a numerical test blind). Returns the model in
    eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            if m.affine:
                lo, hi = gamma_range
                m.weight.copy_(lo + (hi - lo) * torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
        if data is not None:
            momenta = [m.momentum for m in bns]
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average: exactly this batch's statistics
            model.train()
            model(data)
            for m, mom in zip(bns, momenta):
                m.momentum = mom
        for m in bns:
            if not m.track_running_stats:
                continue
            c = m.num_features
            if data is not None:
                std = torch.sqrt(m.running_var)
                m.running_mean.add_(0.1 * std * torch.randn(c, generator=g))
                m.running_var.mul_(0.7 + 0.7 * torch.rand(c, generator=g))
            else:
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
    return model.eval()


PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")


def pretrained_arrays(name: str) -> Dict[str, np.ndarray]:
    """The arrays of a shipped pretrained model (converters/pretrained/<name>.npz)."""
    path = os.path.join(PRETRAINED_DIR, name + ".npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the pretrained weights are missing from this install")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def load_arrays(model: nn.Module, arrays: Dict[str, np.ndarray]) -> nn.Module:
    """Load numpy arrays (any float dtype) named like model.state_dict() into `model`."""
    state = model.state_dict()
    missing = [k for k in state if k not in arrays]
    if missing:
        raise ValueError(f"{type(model).__name__}: no arrays for {', '.join(missing)}")
    model.load_state_dict({k: torch.from_numpy(np.asarray(arrays[k], dtype=np.float32))
                           .reshape(state[k].shape) for k in state})
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
