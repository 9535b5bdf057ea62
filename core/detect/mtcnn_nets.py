"""The three MTCNN networks (Zhang et al. 2016), shaped to load facenet-pytorch's ``data/{p,r,o}net.pt``.

Only the weights come from facenet-pytorch: its package cannot be imported here (it imports torchvision),
so the layers are declared again with the same parameter names. Details that the converted weights depend
on: max-pools round up (``ceil_mode=True``, as in the original Caffe model), and RNet/ONet flatten their
last feature map in (W, H, C) order (``permute(0, 3, 2, 1)``), the memory order the weights were converted
from. Inputs are already normalised, ``(rgb - 127.5) / 128``; see :func:`normalise`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import torch
from torch import nn
from torch.nn import functional as F

from ..assets import package_file
from ..errors import ModelMissingError

WEIGHTS_PACKAGE = "facenet_pytorch"


def normalise(rgb: torch.Tensor) -> torch.Tensor:
    """Map float RGB in [0, 255] to the networks' input range, (x - 127.5) / 128."""
    return (rgb - 127.5) * 0.0078125


class _MtcnnNet(nn.Module):
    """Common loading: each network knows its own weights file and loads it strictly, in eval mode."""

    weights_name: str

    @classmethod
    def load(cls, weights_dir: Path | None = None) -> Self:
        """The network with its weights from ``weights_dir`` (default: the installed facenet-pytorch)."""
        if weights_dir is None:
            path = package_file(WEIGHTS_PACKAGE, f"data/{cls.weights_name}")
        else:
            path = Path(weights_dir) / cls.weights_name
            if not path.is_file():
                raise ModelMissingError(
                    f"MTCNN weights {path} are missing "
                    f"(copy {cls.weights_name} from the data/ folder of facenet-pytorch 2.6.0)"
                )
        net = cls()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        except Exception as exc:  # any unpickling or shape error means the file is not these weights
            raise ModelMissingError(
                f"MTCNN weights {path} cannot be loaded ({type(exc).__name__}); "
                "reinstall with: pip install --no-deps facenet-pytorch==2.6.0"
            ) from exc
        net.eval()
        net.requires_grad_(False)
        return net


class PNet(_MtcnnNet):
    """Proposal net: fully convolutional, one 12x12 window per output cell at stride 2.

    Returns (box regression N x 4 x h x w, face probability N x h x w).
    """

    weights_name = "pnet.pt"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        prob = F.softmax(self.conv4_1(x), dim=1)[:, 1]
        return self.conv4_2(x), prob


class RNet(_MtcnnNet):
    """Refine net on 24x24 crops. Returns (box regression N x 4, face probability N)."""

    weights_name = "rnet.pt"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(_MtcnnNet):
    """Output net on 48x48 crops.

    Returns (box regression N x 4, landmarks N x 10 as 5 x then 5 y relative to the crop, probability N).
    """

    weights_name = "onet.pt"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)[:, 1]
