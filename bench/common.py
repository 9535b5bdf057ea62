"""Shared bits of the benchmarks: where the test data is and what machine ran them."""

from __future__ import annotations

import os
import platform
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def preset_variant(spec: str) -> str:
    """A mode, optionally with preset fields changed for an experiment: ``mid`` or ``mid:rho=0.03:steps=60``.
    The variant is registered under ``spec`` in cloakd's presets (this process only); returns its name."""
    from cloakd.core.cloak.presets import PRESETS

    name, *changes = spec.split(":")
    if not changes:
        return name
    preset = PRESETS[name]
    for change in changes:
        field, value = change.split("=", 1)
        kind = type(getattr(preset, field))
        preset = preset.with_overrides(**{field: kind(value) if kind in (str, int) else float(value)})
    PRESETS[spec] = preset
    return spec
