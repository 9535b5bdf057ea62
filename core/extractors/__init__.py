"""Face feature extractors behind one small interface, looked up by name.

    from cloakd.core.extractors import load_extractor
    model = load_extractor("dlib_resnet")     # default extractor
    desc = model(chips)                        # chips: float N x 3 x S x S RGB in [0, 255]
"""

from .base import ChipGeometry, Extractor, available, load_extractor, register

DEFAULT_EXTRACTOR = "dlib_resnet"

__all__ = ["ChipGeometry", "Extractor", "available", "load_extractor", "register", "DEFAULT_EXTRACTOR"]
