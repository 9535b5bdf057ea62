"""The pure engine: image in, image out. No I/O beyond bytes, no configuration, no global state.

Its front door (README, "Using the engine from Python")::

    from cloakd.core import FaceAnalyzer, protect, request_for_target

    analyzer = FaceAnalyzer().load_cloak_models()        # the models, loaded once
    request = request_for_target("Amanda_Bynes", mode="mid")
    result = protect(analyzer, photo_bytes, request)     # result.ok, result.data, result.faces, result.reason

The names are loaded on first use, so that importing a light part of the engine (``cloakd.core.errors``,
``cloakd.core.photo``) does not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types

#: the public names, by the module that defines them
_EXPORTS = {
    "FaceAnalyzer": ".faces",
    "ProtectRequest": ".protect",
    "ProtectResult": ".protect",
    "protect": ".protect",
    "request_for_target": ".protect",
    "OutputOptions": ".photo.container",
    "CloakdError": ".errors",
}

__all__ = sorted(_EXPORTS)


class _Engine(types.ModuleType):
    """This package as a module: exported names load their module on first use, and the function
    ``protect`` keeps its name although a sub-module is called so too (importing a sub-module sets the
    package's attribute of that name to the module)."""

    def __getattr__(self, name: str):
        if name not in _EXPORTS:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(_EXPORTS[name], self.__name__), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            value = getattr(value, name)  # the function protect, not the module core/protect.py
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_EXPORTS))


sys.modules[__name__].__class__ = _Engine
