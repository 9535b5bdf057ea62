"""Cloak strength presets: DSSIM budget rho and optimisation steps (Fawkes eq. 2).

Measured on ../shared/data/faces with `cloakd evaluate --users 5` (README, "Cloak"): at rho 0.012 (the
value of Fawkes' public "mid" mode) a linear tracker still recognised 20% of the user's clean photos when
the cloaked photos had been recompressed (JPEG 75); at 0.015 it recognised 5%, which is why "mid" is 0.015.

``rho`` is the largest allowed DSSIM between a face's region before and after cloaking, measured at the
photo's full resolution on the written pixels; it is enforced exactly (the optimiser's result is scaled
back if needed), not just encouraged. ``low`` uses the budget of the Fawkes paper (rho = 0.007);
``paper`` is that budget with the paper's ~1000 steps.

Steps: with Adam at 1.5 pixel units (cosine decay), 35 steps reach the same place as 50 or 75 at this
budget (measured on 10 LFW faces: mean distance to T after JPEG 75 + 1080 px 0.398 at 35 steps, 0.390
at 50), because the budget, not the step count, limits how far a face can move. ``stop_at`` ends the
search once every view of every targeted face is on average within that distance of T.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .views import ViewDistribution


@dataclass(frozen=True)
class CloakPreset:
    name: str
    rho: float  # DSSIM budget
    steps: int  # Adam steps
    lr: float = 1.0  # Adam step size, in 0-255 pixel units
    views_per_step: int = 2  # chips per face per step: the exact view plus random upload views
    away_weight: float = 0.0  # weight of the push away from the face's own features (targeted cloaks)
    #: distances below are in units of each extractor's identity gap (dlib's: 0.386)
    away_margin: float = 1.5  # push away from the face's own features until this far (dlib: 0.58)
    gain_weight: float = 4.0  # weight of the hinge on a gain towards the target below ``gain_goal``
    gain_goal: float = 0.6  # in every extractor (the verification needs 0.4)
    stop_at: float | None = None  # stop once every targeted face's views are on average this close to T
    views: ViewDistribution = field(default_factory=ViewDistribution)  # the random views' ranges

    def with_overrides(self, **changes) -> "CloakPreset":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


PRESETS: dict[str, CloakPreset] = {
    "low": CloakPreset("low", rho=0.007, steps=60, views_per_step=4, away_weight=1.0),
    "mid": CloakPreset("mid", rho=0.015, steps=35, lr=1.5, views_per_step=4, away_weight=1.0, stop_at=0.73),
    "high": CloakPreset("high", rho=0.017, steps=100, views_per_step=4, away_weight=1.0),
}
PRESETS["paper"] = replace(PRESETS["low"], name="paper", steps=1000)

DEFAULT_PRESET = "mid"
#: the order in which a failed verification escalates
STRONGER = {"low": "mid", "mid": "high"}


def preset(name: str) -> CloakPreset:
    from ..errors import CloakdError

    try:
        return PRESETS[name]
    except KeyError:
        raise CloakdError(f"unknown cloak mode {name!r} (choose one of: {', '.join(PRESETS)})") from None
