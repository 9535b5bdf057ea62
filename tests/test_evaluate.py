"""The paper's protection measurement, end to end through `cloakd evaluate` on real photos."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cloakd.core.evaluate import TRACKERS, LinearClassifier, NearestCentroid, psnr, score_tracker

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


@pytest.mark.slow
def test_evaluate_cli_reports_protection_on_real_photos(data_dir, tmp_path):
    candidates = tmp_path / "sybil"
    candidates.mkdir()
    for person in sorted((data_dir / "targets").iterdir())[:40:5]:  # 8 public faces as Sybil candidates
        (candidates / f"{person.name}.jpg").symlink_to(sorted(person.glob("*.jpg"))[0])
    run = subprocess.run(
        [sys.executable, "-m", "cloakd.daemon.cli", "evaluate", str(data_dir / "faces"), "--users", "2", "--json",
         "--leaked", "0,0.25", "--sybil-candidates", str(candidates), "--sybil-images", "2", "--sybil-tries", "1"],
        capture_output=True, text=True, timeout=1500, cwd=REPO,
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
    run = subprocess.run([sys.executable, "-m", "cloakd.daemon.cli", "evaluate", str(tmp_path), "--leaked", "0,1.5"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 2 and "1.5" in run.stderr and "ratios" in run.stderr
