"""Weights that cloakd ships itself (converted or trained networks, float16 state dicts under core/data).

Each file is checked against a digest of its tensors (names, shapes and float16 values, independent of
torch.save's container format): the state-dict shape checks alone cannot tell a damaged or foreign copy
with the right shapes from the real one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..errors import ModelCorruptError, ModelMissingError

DATA = Path(__file__).resolve().parent.parent / "data"


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, shape and float16 bytes, in order."""
    h = hashlib.sha256()
    for key, value in state.items():
        h.update(f"{key}:{tuple(value.shape)};".encode())
        h.update(value.detach().to(torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()


def load_state(path: str | os.PathLike[str], digest: str, what: str, fix: str) -> dict[str, torch.Tensor]:
    """The float32 state dict in ``path``: ModelMissingError if the file is absent or unreadable,
    ModelCorruptError if it is not a state dict or its digest differs. ``what`` names the weights in
    messages, ``fix`` says how to get a good copy."""
    source = Path(path)
    if not source.is_file():
        raise ModelMissingError(f"{what} weights file {source} is missing: {fix}")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except OSError as e:
        raise ModelMissingError(f"{what} weights file {source} cannot be read: {e.strerror}: {fix}") from None
    except Exception as e:  # noqa: BLE001 - torch raises several kinds for a truncated or foreign file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelCorruptError(f"{what} weights file {source} cannot be read ({reason}): {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelCorruptError(f"{what} weights file {source} does not hold a state dict: {fix}")
    if weights_digest(state) != digest:
        raise ModelCorruptError(f"{what} weights file {source} is damaged or not cloakd's (digest differs): {fix}")
    return {k: v.float() for k, v in state.items()}


def save_state(model: torch.nn.Module, path: str | os.PathLike[str]) -> str:
    """Write ``model``'s state dict as float16 to ``path``; returns its digest (for :func:`load_state`)."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return weights_digest(state)
