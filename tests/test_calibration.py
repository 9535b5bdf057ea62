"""Every extractor cloakd can load is calibrated and present in the shipped target bank, so that adding one
is its module, its weights and one calibration run (scripts/calibrate_extractors.py)."""

from __future__ import annotations

import json

import pytest

from cloakd.core.errors import ModelMissingError
from cloakd.core.extractors import CLOAK_EXTRACTORS, DEFAULT_EXTRACTOR, FACTORIES, load_extractor
from cloakd.core.extractors.calibration import CALIBRATION, Calibration, calibration, write_calibration
from cloakd.core.targets import TargetBank


def test_every_extractor_has_a_calibration_with_a_positive_identity_gap():
    for name in FACTORIES:
        c = calibration(name)
        assert 0 < c.same_person < c.match_threshold < c.other_person or name == DEFAULT_EXTRACTOR
        assert c.identity_gap > 0.2


def test_an_extractor_reads_its_scale_from_the_table_and_dlib_keeps_its_own_threshold():
    sface = load_extractor("sface")
    assert sface.identity_gap == pytest.approx(calibration("sface").identity_gap)
    assert sface.match_threshold == calibration("sface").match_threshold
    assert load_extractor(DEFAULT_EXTRACTOR).match_threshold == 0.6  # dlib's own documented threshold


def test_the_bank_holds_every_cloak_extractors_space_for_every_photo():
    bank = TargetBank.load()
    assert bank.extractor == DEFAULT_EXTRACTOR
    assert set(bank.spaces) == set(CLOAK_EXTRACTORS) - {DEFAULT_EXTRACTOR}
    for name, per_identity in bank.spaces.items():
        dim = load_extractor(name).dim
        assert [len(d) for d in per_identity] == [len(d) for d in bank.descriptors]
        assert all(d.shape[1] == dim for d in per_identity)
    assert set(bank.point(bank.names[0])) == set(CLOAK_EXTRACTORS)


def test_an_uncalibrated_extractor_is_a_clear_error_and_writing_adds_it(tmp_path):
    table = tmp_path / "calibration.json"
    table.write_text(CALIBRATION.read_text())
    with pytest.raises(
        ModelMissingError, match="'newnet' is not calibrated.*calibrate_extractors.py --extractors newnet"
    ):
        calibration("newnet", table)
    write_calibration({"newnet": Calibration(0.5, 1.25, 0.9)}, {"data": "test"}, table)
    assert calibration("newnet", table).identity_gap == pytest.approx(0.75)
    assert calibration("sface", table) == calibration("sface")  # the others are kept
    assert json.loads(table.read_text())["about"]["data"] == "test"
