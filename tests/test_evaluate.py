"""The paper's protection measurement: the trackers, the experiment in core on a small real case, and
`cloakd evaluate` end to end on real photos."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cloakd.core.errors import CloakdError
from cloakd.core.evaluate import (
    TRACKERS,
    VARIANTS,
    LinearClassifier,
    NearestCentroid,
    Settings,
    evaluate,
    psnr,
    score_tracker,
    upload_processing,
)
from cloakd.core.photo.decode import decode
from cloakd.core.sybil import Candidate
from conftest import REPO


def test_trackers_identify_clean_identities(lfw_descriptors):
    """Sanity of the trackers themselves: trained on clean photos they recognise the held-out ones."""
    names, _, x = lfw_descriptors
    train = np.zeros(len(x), bool)
    for n in np.unique(names):
        train[np.flatnonzero(names == n)[:8]] = True
    for model in (LinearClassifier(), NearestCentroid()):
        pred = model.fit(x[train], names[train]).predict(x[~train])
        assert np.mean(pred == names[~train]) >= 0.95


def test_psr_counts_the_users_clean_photos_not_recognised(lfw_descriptors):
    """With the user's training photos replaced by another identity's, the user is never recognised."""
    names, _, x = lfw_descriptors
    user, stand_in = "Jackie_Chan", "Nicole_Kidman"
    others = [n for n in np.unique(names) if n not in (user, stand_in)]
    tx = np.concatenate([x[names == n][:8] for n in others] + [x[names == stand_in][:8]])
    ty = np.array([n for n in others for _ in range(8)] + [user] * 8)
    ox = np.concatenate([x[names == n][8:] for n in others])
    oy = np.array([n for n in others for _ in range(4)])
    score = score_tracker("centroid", tx, ty, user, x[names == user][8:], ox, oy)
    assert score.psr == 1.0 and score.normal_accuracy >= 0.95
    honest = np.concatenate([tx[:-8], x[names == user][:8]])
    assert score_tracker("linear", honest, ty, user, x[names == user][8:], ox, oy).psr == 0.0


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 1) == pytest.approx(20 * np.log10(255))


@pytest.mark.slow  # about 50 s on one thread: 6 photos cloaked
def test_experiment_on_two_users_with_leaks_and_a_sybil_image(analyzer, data_dir):
    """evaluate() on 4 identities x 4 photos, 2 of them users with 2 cloaked training photos each, one Sybil
    image per user: every photo is accounted for, progress covers both stages, and the leaked-photos table
    agrees with the main one where nothing leaked."""
    people = {
        p.name: [(f.name, f.read_bytes()) for f in sorted(p.glob("*.jpg"))[:4]]
        for p in sorted((data_dir / "faces").iterdir())[:4]
    }
    candidates = [
        Candidate(p.name, sorted(p.glob("*.jpg"))[0].read_bytes()) for p in sorted((data_dir / "targets").iterdir())[:2]
    ]
    calls, notes = [], []
    settings = Settings(users=2, train=2, leaked=(0.0, 0.5), sybil_images=1, sybil_tries=1)
    e = evaluate(
        analyzer, people, settings, candidates=candidates, progress=lambda *call: calls.append(call), note=notes.append
    )
    assert len(e.users) == 2 and set(e.users) <= set(people) and e.cloaked + e.held == 4
    assert calls[0] == ("describing", 0, 16) and calls[16] == ("describing", 16, 16)
    assert calls[17:] == [("cloaking", k, 6) for k in range(7)]
    assert e.cloaked and e.median_dssim <= e.rho + 1e-9 and e.median_psnr > 30
    assert e.sybil_images == sum("Sybil image" in n and "no Sybil" not in n for n in notes)
    assert set(e.trackers) == {f"{t}/{v}" for t in TRACKERS for v in VARIANTS}
    leaked = {(x["tracker"], x["files"], x["r"], x["sybil"]): x for x in e.leaked}
    assert len(leaked) == len(TRACKERS) * len(VARIANTS) * 2 * (2 if e.sybil_images else 1)
    for (tracker, files, r, sybil), x in leaked.items():
        assert 0 <= x["psr"] <= 1 and x["normal_accuracy"] >= 0.75
        if r == 0 and not sybil:  # no leak, no Sybil: the main measurement itself
            assert x == {"tracker": tracker, "files": files, "r": r, "sybil": sybil, **e.trackers[f"{tracker}/{files}"]}


def test_experiment_needs_three_identities_with_enough_photos(analyzer, data_dir):
    photos = [(f.name, f.read_bytes()) for f in sorted((data_dir / "faces" / "Bill_Gates").glob("*.jpg"))[:4]]
    with pytest.raises(CloakdError, match="at least 3 identities with 4\\+ photos"):
        evaluate(analyzer, {"a": photos, "b": photos, "c": photos[:3]}, Settings(train=2))


def test_upload_processing_downscales_and_recompresses_upright(data_dir):
    photo = data_dir / "metadata" / "portrait_6.jpg"  # EXIF orientation 6: shown rotated
    shown = decode(photo.read_bytes())
    uploaded = decode(upload_processing(photo.read_bytes(), long_side=200))
    assert uploaded.format == "JPEG" and max(uploaded.size) == 200
    assert (uploaded.size[0] > uploaded.size[1]) == (shown.size[0] > shown.size[1])


@pytest.mark.slow
def test_evaluate_cli_reports_protection_on_real_photos(data_dir, tmp_path):
    candidates = tmp_path / "sybil"
    candidates.mkdir()
    for person in sorted((data_dir / "targets").iterdir())[:40:5]:  # 8 public faces as Sybil candidates
        (candidates / f"{person.name}.jpg").symlink_to(sorted(person.glob("*.jpg"))[0])
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloakd.daemon.cli",
            "evaluate",
            str(data_dir / "faces"),
            "--users",
            "2",
            "--json",
            "--leaked",
            "0,0.25",
            "--sybil-candidates",
            str(candidates),
            "--sybil-images",
            "2",
            "--sybil-tries",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    s = json.loads(run.stdout)
    assert len(s["users"]) == 2 and s["cloaked"] + s["held"] == 16
    assert s["median_dssim"] <= s["rho"] + 1e-9 and s["median_psnr"] > 35
    for tracker in ("linear", "centroid"):
        written, uploaded = s["trackers"][f"{tracker}/written"], s["trackers"][f"{tracker}/uploaded"]
        assert written["psr"] >= 0.75 and uploaded["psr"] >= 0.5
        assert written["normal_accuracy"] >= 0.95 and uploaded["normal_accuracy"] >= 0.95
    # the leaked-photos experiment: every ratio, without and with the Sybil images
    assert s["sybil_images"] == 4
    leaked = {(e["tracker"], e["files"], e["r"], e["sybil"]): e for e in s["leaked"]}
    assert len(leaked) == len(TRACKERS) * 2 * 2 * 2  # classifiers x files x ratios x with/without Sybil
    for (tracker, files, r, sybil), e in leaked.items():
        assert 0 <= e["psr"] <= 1 and e["normal_accuracy"] >= 0.9
        if r == 0 and not sybil:  # no leak, no Sybil: the main measurement itself
            assert e["psr"] == s["trackers"][f"{tracker}/{files}"]["psr"]
        if not sybil:  # leaked clean photos can only help the tracker
            assert e["psr"] <= leaked[(tracker, files, 0.0, False)]["psr"]


def test_evaluate_rejects_bad_ratios(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "cloakd.daemon.cli", "evaluate", str(tmp_path), "--leaked", "0,1.5"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 2 and "1.5" in run.stderr and "ratios" in run.stderr
