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
    from dataclasses import replace

    from cloakd.core.cloak.presets import PRESETS

    name, *changes = spec.split(":")
    if not changes:
        return name
    preset = PRESETS[name]
    for change in changes:
        field, value = change.split("=", 1)
        if field.startswith("views."):  # the random views, e.g. views.zoom=0.15 or views.jpeg_quality=60-80
            sub = field.split(".", 1)[1]
            parsed = tuple(int(v) for v in value.split("-")) if "-" in value else float(value)
            preset = preset.with_overrides(views=replace(preset.views, **{sub: parsed}))
            continue
        kind = type(getattr(preset, field))
        cast = {
            str: str,
            int: int,
            bool: lambda v: v.lower() in ("1", "true", "yes"),
            tuple: lambda v: tuple(v.split("+")),  # extractors=dlib_resnet+sface
        }.get(kind, _number)
        preset = preset.with_overrides(**{field: cast(value)})
    PRESETS[spec] = preset
    return spec


def butteraugli(original: Path, cloaked: Path | bytes) -> float:
    """butteraugli distance (Debian package ``butteraugli``) between two image files (or a file and the bytes
    of another): the independent judge of visibility (< 1: invisible; the cloak optimises DSSIM instead)."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".jpg") as tmp:
        if isinstance(cloaked, bytes):
            tmp.write(cloaked)
            tmp.flush()
            cloaked = Path(tmp.name)
        out = subprocess.run(["butteraugli", str(original), str(cloaked)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)
