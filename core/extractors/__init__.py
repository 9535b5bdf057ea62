"""Face feature extractors behind one small interface, looked up by name.

    from cloakd.core.extractors import load_extractor
    model = load_extractor("dlib_resnet")     # default extractor
    desc = model(chips)                        # chips: float N x 3 x S x S RGB in [0, 255]

``dlib_resnet`` (dlib's ResNet) is the primary extractor: faces, identities and target classes are in its
space. The cloak is optimised against ``CLOAK_EXTRACTORS``: an ensemble of different recognisers, each
seeing the face through its own alignment, so that the cloak also moves recognisers it never saw.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import CloakdError
from ..extractor_names import CLOAK, PRIMARY
from .arcface_mbf import arcface_mbf
from .base import ChipGeometry, Extractor
from .dlib_resnet import dlib_resnet
from .facenet import facenet
from .omz_reid import omz_reid
from .sface import sface

#: name -> factory(**options) -> Extractor
FACTORIES: dict[str, Callable[..., Extractor]] = {
    "dlib_resnet": dlib_resnet,
    "sface": sface,
    "omz_reid": omz_reid,
    "facenet": facenet,
    "arcface_mbf": arcface_mbf,
}

DEFAULT_EXTRACTOR = PRIMARY
CLOAK_EXTRACTORS = CLOAK


def load_extractor(name: str, **options) -> Extractor:
    """Build the extractor ``name``, frozen: eval mode, gradients off for its parameters (here only: a
    factory returns the bare network)."""
    try:
        factory = FACTORIES[name]
    except KeyError:
        raise CloakdError(f"unknown extractor {name!r} (available: {', '.join(sorted(FACTORIES))})") from None
    return factory(**options).eval().requires_grad_(False)


__all__ = ["CLOAK_EXTRACTORS", "ChipGeometry", "DEFAULT_EXTRACTOR", "Extractor", "FACTORIES", "load_extractor"]
