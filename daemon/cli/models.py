"""Model loading for CLI commands: once per process, with the process-wide torch settings."""

from __future__ import annotations

import os


def configure_torch(threads: int | None = None) -> None:
    """Set torch's thread count (CLOAKD_THREADS, default 2 for one-shot commands)."""
    import torch

    torch.set_num_threads(int(threads or os.environ.get("CLOAKD_THREADS", "2")))


def load_analyzer():
    from cloakd.core.faces import FaceAnalyzer

    configure_torch()
    return FaceAnalyzer()
