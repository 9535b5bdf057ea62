"""The engine the configuration asks for (``engine: kind``), with a clear error if Dask is not installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from cloakd.core.errors import CloakdError

from ..config import INSTALL_DASK, Config
from ..process import ProcessContext
from .local import LocalEngine
from .status import EngineState


def dask_missing() -> str | None:
    """Why ``kind: dask`` cannot run here (None if it can)."""
    if importlib.util.find_spec("distributed") is None:
        return f"Dask's `distributed` package is not installed; fix: {INSTALL_DASK}"
    return None


def open_engine(config: Config, context: ProcessContext, device: str, on_change: Callable[[EngineState], None]):
    """LocalEngine or DaskEngine (which falls back to a LocalEngine's work if the configuration says so)."""
    local = LocalEngine(config, context, device)
    if config.engine.kind == "local":
        return local
    missing = dask_missing()
    if missing:
        raise CloakdError(f"engine kind dask: {missing}")
    from .cluster import DaskEngine

    return DaskEngine(config, context, local, local.threads, on_change)
