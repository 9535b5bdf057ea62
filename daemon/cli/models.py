"""Model loading for CLI commands: once per process, with the process-wide torch settings."""

from __future__ import annotations

import os


def configure_torch(threads: int | None = None) -> None:
    """Set torch's thread count (CLOAKD_THREADS, default 2 for one-shot commands)."""
    import torch

    torch.set_num_threads(int(threads or os.environ.get("CLOAKD_THREADS", "2")))


def load_analyzer(cloaks: bool = False):
    """The face analyser; with ``cloaks``, also the models only cloaking needs (a command that cloaks
    fails at once, in one line, if one is missing)."""
    from cloakd.core.faces import FaceAnalyzer

    configure_torch()
    analyzer = FaceAnalyzer()
    return analyzer.load_cloak_models() if cloaks else analyzer
