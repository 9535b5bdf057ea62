"""The paper's measurement of protection (section 5): the trackers, and the whole experiment on photos.

A tracker trains a classifier on feature vectors of many identities, the user's training images being
cloaked. Protection success rate (PSR) = the fraction of the user's *clean* test images the trained
model does NOT classify as the user. Normal accuracy = accuracy on the other identities' test images.
Three classifiers: a linear one (multinomial logistic regression, the paper's transfer-learning head),
nearest centroid and 1-NN.

:func:`evaluate` runs the experiment on photos (bytes, no I/O): for a few identities acting as users, the
training photos go through the real pipeline (protect(): detect, cloak towards the user's eq.-3 target,
strip, verify); a tracker trains on descriptors of every identity, the user's being those of the cloaked
files, and is asked about the user's clean test photos. Measured on the files as written and after an
upload platform's processing (downscale to 1080 px on the long side, JPEG quality 75), with DSSIM and
PSNR. The tracker's extractor is the analyser's primary one, i.e. one the cloak is optimised against:
this measures the best case.

The leaked-photos experiment (Fawkes section 7.2, figure 10): the tracker also holds a ratio r of the
user's training photos uncloaked (leaks, other people's posts), and, with Sybil candidates, the user runs
a Sybil account: Sybil images (candidates cloaked towards the user's uncloaked features, core/sybil.py)
that the tracker trains on as a second identity. PSR is reported for every r, without and with them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .cloak.presets import DEFAULT_PRESET, PRESETS
from .errors import CloakdError
from .faces import FaceAnalyzer, main_face
from .photo.decode import decode
from .protect import ProtectRequest, protect, request_for_target
from .sybil import Candidate, describe_candidates, make_sybil, sybil_target
from .targets import TargetBank, choose_target


class NearestCentroid:
    def fit(self, x: np.ndarray, y: np.ndarray) -> "NearestCentroid":
        self.labels = np.unique(y)
        self.centroids = np.stack([x[y == c].mean(0) for c in self.labels])
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(x[:, None, :] - self.centroids[None], axis=2)
        return self.labels[d.argmin(1)]


class LinearClassifier:
    """Softmax regression on descriptors, full-batch L-BFGS with a little L2 (deterministic)."""

    def __init__(self, weight_decay: float = 1e-4, iterations: int = 200):
        self.weight_decay = weight_decay
        self.iterations = iterations

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LinearClassifier":
        self.labels, yi = np.unique(y, return_inverse=True)
        xt = torch.from_numpy(np.asarray(x, np.float64))
        yt = torch.from_numpy(yi)
        self.mean = xt.mean(0)
        xt = xt - self.mean
        w = torch.zeros(xt.shape[1], len(self.labels), dtype=torch.float64, requires_grad=True)
        b = torch.zeros(len(self.labels), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=self.iterations, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xt @ w * 10 + b, yt) + self.weight_decay * (w**2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.w, self.b = w.detach(), b.detach()
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.asarray(x, np.float64)) - self.mean
        return self.labels[(xt @ self.w * 10 + self.b).argmax(1).numpy()]


class NearestNeighbour:
    """1-NN: the label of the closest training descriptor."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> "NearestNeighbour":
        self.x, self.y = np.asarray(x, np.float64), np.asarray(y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(np.asarray(x, np.float64)[:, None, :] - self.x[None], axis=2)
        return self.y[d.argmin(1)]


TRACKERS = {"linear": LinearClassifier, "centroid": NearestCentroid, "1nn": NearestNeighbour}


@dataclass
class TrackerScore:
    psr: float  # fraction of the user's clean test images NOT classified as the user
    normal_accuracy: float  # accuracy on the other identities' test images


def score_tracker(
    tracker: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    user: str,
    user_test_x: np.ndarray,
    others_test_x: np.ndarray,
    others_test_y: np.ndarray,
) -> TrackerScore:
    model = TRACKERS[tracker]().fit(train_x, train_y)
    psr = float(np.mean(model.predict(user_test_x) != user)) if len(user_test_x) else float("nan")
    acc = float(np.mean(model.predict(others_test_x) == others_test_y)) if len(others_test_x) else float("nan")
    return TrackerScore(psr, acc)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# --- the experiment -----------------------------------------------------------------------------------------

#: a photo: (label, the file's bytes); the label names it in messages
Photo = tuple[str, bytes]
#: the published files' variants a tracker may collect
VARIANTS = ("written", "uploaded")


@dataclass(frozen=True)
class Settings:
    """``users`` identities act as users; ``train`` of each user's photos are cloaked for the tracker (the
    rest are the clean test photos); ``leaked``: ratios of those the tracker also holds uncloaked;
    ``sybil_images`` per user (None: as many as ``train``), each the best of ``sybil_tries`` candidates;
    ``seed`` decides which identities are users and the cloaks' randomness."""

    users: int = 5
    train: int = 8
    mode: str = DEFAULT_PRESET
    seed: int = 0
    leaked: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4)
    sybil_images: int | None = None
    sybil_tries: int = 3

    @property
    def min_photos(self) -> int:
        """Photos an identity needs to take part: the training photos and at least two to test on."""
        return self.train + 2

    @property
    def sybil_per_user(self) -> int:
        return self.train if self.sybil_images is None else self.sybil_images


@dataclass
class Evaluation:
    """What :func:`evaluate` measured. ``trackers``: per "tracker/variant", the mean PSR and normal
    accuracy over the users; ``leaked``: the same per tracker, variant, leaked ratio r, with or without
    the Sybil images."""

    users: list[str]
    mode: str
    train_per_user: int
    cloaked: int
    held: int
    median_dssim: float | None
    rho: float
    median_psnr: float | None
    sybil_images: int
    trackers: dict[str, dict[str, float]]
    leaked: list[dict]


def upload_processing(data: bytes, long_side: int = 1080, quality: int = 75) -> bytes:
    """What a platform does: downscale to ``long_side`` (never up) and recompress as JPEG."""
    img = Image.fromarray(decode(data).rgb)
    scale = long_side / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main_descriptor(analyzer: FaceAnalyzer, data: bytes, label: str = "input") -> np.ndarray | None:
    """The descriptor of a photo's main face (None: no face). CloakdError if undecodable."""
    face = main_face(analyzer.read(data, label)[1])
    return None if face is None else face.descriptor


def published(analyzer: FaceAnalyzer, data: bytes, label: str) -> dict[str, np.ndarray | None]:
    """The main face's descriptor of a published file, as written and after upload processing."""
    return {
        "written": main_descriptor(analyzer, data, label),
        "uploaded": main_descriptor(analyzer, upload_processing(data), label),
    }


def _silent(*_) -> None:
    pass


#: progress(stage, done, total): called with done = 0 when a stage starts, then after each item
Progress = Callable[[str, int, int], None]


@dataclass
class _Tally:
    """The experiment's running totals: every tracker's score per user, by (tracker, variant) and by
    (tracker, variant, leaked ratio, with Sybil images), and what the photos went through."""

    leaked: Sequence[float]
    scores: dict[tuple, list[TrackerScore]] = field(init=False)
    leaks: dict[tuple, list[TrackerScore]] = field(init=False)
    dssims: list[float] = field(default_factory=list)
    psnrs: list[float] = field(default_factory=list)
    cloaked: int = 0
    held: int = 0
    sybil: int = 0

    def __post_init__(self) -> None:
        self.scores = {(t, v): [] for t in TRACKERS for v in VARIANTS}
        self.leaks = {
            (t, v, r, sy): [] for t in TRACKERS for v in VARIANTS for r in self.leaked for sy in (False, True)
        }

    def result(self, users: list[str], settings: Settings) -> Evaluation:
        return Evaluation(
            users=users,
            mode=settings.mode,
            train_per_user=settings.train,
            cloaked=self.cloaked,
            held=self.held,
            median_dssim=_median(self.dssims),
            rho=PRESETS[settings.mode].rho,
            median_psnr=_median(self.psnrs),
            sybil_images=self.sybil,
            trackers={f"{t}/{v}": _mean(r) for (t, v), r in self.scores.items() if r},
            leaked=[
                {"tracker": t, "files": v, "r": r, "sybil": sy, **_mean(res)}
                for (t, v, r, sy), res in self.leaks.items()
                if res
            ],
        )


def evaluate(
    analyzer: FaceAnalyzer,
    people: Mapping[str, Sequence[Photo]],
    settings: Settings = Settings(),
    *,
    bank: TargetBank | None = None,
    candidates: Sequence[Candidate] | None = None,
    progress: Progress = _silent,
    note: Callable[[str], None] = _silent,
) -> Evaluation:
    """The experiment (module docstring) on ``people`` (identity -> its photos), with Sybil images from
    ``candidates`` when given. Identities with fewer than ``settings.min_photos`` photos take no part.
    ``note`` hears what happened to single photos (held back, skipped, Sybil images). CloakdError when
    fewer than 3 identities can take part."""
    people = {name: photos for name, photos in people.items() if len(photos) >= settings.min_photos}
    if len(people) < 3:
        raise CloakdError(
            f"the dataset needs at least 3 identities with {settings.min_photos}+ photos each (it has {len(people)})"
        )
    bank = TargetBank.load() if bank is None else bank
    pool = None if candidates is None else describe_candidates(analyzer, candidates)
    clean = _describe(analyzer, people, progress, note)
    rng = np.random.default_rng(settings.seed)
    eligible = sorted(n for n, rows in clean.items() if len(rows) >= settings.min_photos)
    users = [str(u) for u in rng.choice(eligible, size=min(settings.users, len(eligible)), replace=False)]
    tally = _Tally(settings.leaked)
    total = len(users) * (settings.train + (settings.sybil_per_user if pool is not None else 0))
    step = _Steps(progress, "cloaking", total)
    for user in users:
        train = clean[user][: settings.train]
        train_x = np.stack([d for _, d in train])
        target = choose_target(bank, train_x, rng=np.random.default_rng([settings.seed, len(user)]))
        request = request_for_target(target.name, bank=bank, mode=settings.mode, seed=settings.seed)
        cloaked = [_cloak(analyzer, photo, request, tally, note, step) for photo, _ in train]
        sybil = [] if pool is None else _sybil_images(analyzer, pool, train_x, settings, note, step)
        tally.sybil += len(sybil)
        _UserExperiment(clean, user, settings.train).score(cloaked, sybil, settings.leaked, tally)
    return tally.result(users, settings)


class _Steps:
    """One stage's progress: start at 0, advance after each item."""

    def __init__(self, progress: Progress, stage: str, total: int):
        self.progress, self.stage, self.total, self.done = progress, stage, total, 0
        progress(stage, 0, total)

    def advance(self) -> None:
        self.done += 1
        self.progress(self.stage, self.done, self.total)


def _describe(
    analyzer: FaceAnalyzer, people: Mapping[str, Sequence[Photo]], progress: Progress, note: Callable[[str], None]
) -> dict[str, list[tuple[Photo, np.ndarray]]]:
    """Each identity's photos that show a face, with the main face's clean descriptor (the tracker's view of
    the world); photos without a face or undecodable are left out."""
    step = _Steps(progress, "describing", sum(map(len, people.values())))
    clean = {}
    for name, photos in people.items():
        rows = []
        for label, data in photos:
            try:
                rows.append(((label, data), main_descriptor(analyzer, data, label)))
            except CloakdError as e:
                note(f"skipping {label}: {e}")
            step.advance()
        clean[name] = [(photo, d) for photo, d in rows if d is not None]
    return clean


def _cloak(
    analyzer: FaceAnalyzer,
    photo: Photo,
    request: ProtectRequest,
    tally: _Tally,
    note: Callable[[str], None],
    step: _Steps,
) -> dict[str, np.ndarray | None] | None:
    """One training photo protected as the service would; its published descriptors, None if held back."""
    label, data = photo
    result = protect(analyzer, data, request, label=label)
    step.advance()
    if not result.ok:
        tally.held += 1  # the service would hold it back: the tracker never sees it
        note(f"held {label}: {result.reason}")
        return None
    tally.cloaked += 1
    tally.dssims += [f.dssim for f in result.faces if f.role == "user"]
    tally.psnrs.append(psnr(decode(data, label=label).rgb, decode(result.data, label=label).rgb))
    return published(analyzer, result.data, label)


def _sybil_images(
    analyzer: FaceAnalyzer,
    pool: list[Candidate],
    train: np.ndarray,
    settings: Settings,
    note: Callable[[str], None],
    step: _Steps,
) -> list[dict[str, np.ndarray | None]]:
    """Make the user's Sybil images from ``pool`` (each candidate used once); their published descriptors."""
    out, used = [], set()
    for k in range(settings.sybil_per_user):
        free = [c for c in pool if c.label not in used]
        res = make_sybil(
            analyzer,
            free,
            sybil_target(train),
            references=train,
            tries=settings.sybil_tries,
            mode=settings.mode,
            seed=settings.seed + k,
        )
        step.advance()
        if not res.ok:
            note(f"no Sybil image {k + 1}: {res.reason}")
            continue
        note(f"Sybil image {k + 1}: {res.label}, {res.start:.2f} -> {res.distance:.2f} from the user's features")
        used.add(res.label)  # a published candidate is not used twice; the others stay available
        out.append(published(analyzer, res.data, res.label))
    return out


def _present(rows: Sequence[dict[str, np.ndarray | None] | None], variant: str) -> list[np.ndarray]:
    """The ``variant`` descriptors of the published files that were made and show a face."""
    return [row[variant] for row in rows if row is not None and row[variant] is not None]


class _UserExperiment:
    """One user's turn of the experiment: what a tracker knows besides the user's published photos (the
    other identities' training photos), the test photos it is asked about (the user's clean ones and
    everyone else's), and the trackers trained and scored on them."""

    def __init__(self, clean: dict[str, list[tuple[Photo, np.ndarray]]], user: str, train: int):
        self.user = user
        self.train = [d for _, d in clean[user][:train]]
        others = [n for n in clean if n != user]
        self.others_train = [(d, n) for n in others for _, d in clean[n][:train]]
        others_test = [(d, n) for n in others for _, d in clean[n][train:]]
        self.user_test = np.stack([d for _, d in clean[user][train:]])
        self.others_test_x = np.stack([d for d, _ in others_test])
        self.others_test_y = np.array([n for _, n in others_test])

    def tracker(self, tracker: str, user_x: list[np.ndarray], sybil_x: list[np.ndarray]) -> TrackerScore:
        x = np.stack([d for d, _ in self.others_train] + user_x + sybil_x)
        y = np.array(
            [n for _, n in self.others_train] + [self.user] * len(user_x) + [f"{self.user} (Sybil)"] * len(sybil_x)
        )
        return score_tracker(tracker, x, y, self.user, self.user_test, self.others_test_x, self.others_test_y)

    def score(self, cloaked: list, sybil: list, leaked: Sequence[float], tally: _Tally) -> None:
        """Every tracker on every variant: with the cloaked photos alone, and with a ratio r of them leaked
        uncloaked (the same photos, clean), without and with the Sybil images."""
        for variant in VARIANTS:
            mine, syb = _present(cloaked, variant), _present(sybil, variant)
            for tracker in TRACKERS:
                if mine:
                    tally.scores[(tracker, variant)].append(self.tracker(tracker, mine, []))
                for r in leaked:
                    n_leak = int(round(r * len(self.train)))
                    user_x = self.train[:n_leak] + _present(cloaked[n_leak:], variant)
                    tally.leaks[(tracker, variant, r, False)].append(self.tracker(tracker, user_x, []))
                    if syb:
                        tally.leaks[(tracker, variant, r, True)].append(self.tracker(tracker, user_x, syb))


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _mean(scores: list[TrackerScore]) -> dict[str, float]:
    return {
        "psr": float(np.mean([s.psr for s in scores])),
        "normal_accuracy": float(np.mean([s.normal_accuracy for s in scores])),
    }
