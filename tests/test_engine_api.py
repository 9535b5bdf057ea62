"""The engine's front door (cloakd.core): its names, the README's example, and imports that stay light."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np

from cloakd.core.targets import TargetBank
from conftest import REPO


def test_importing_the_light_parts_does_not_import_torch_and_protect_stays_the_function():
    probe = (
        "import sys, cloakd.core.errors, cloakd.core.photo.decode, cloakd.daemon.cli\n"
        "light = 'torch' not in sys.modules\n"
        "import cloakd.core.protect, cloakd.core.sybil\n"  # the sub-module of the same name, first
        "from cloakd.core import protect, FaceAnalyzer, ProtectRequest, request_for_target\n"
        "print(light, callable(protect) and protect.__module__, sorted(__import__('cloakd.core').core.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split(" ", 2)
    assert out[:2] == ["True", "cloakd.core.protect"], out
    assert "request_for_target" in out[2] and "FaceAnalyzer" in out[2]


def test_request_for_target_keeps_a_stored_centroid_and_takes_the_other_spaces_from_the_bank():
    from cloakd.core import ProtectRequest, request_for_target

    bank = TargetBank.load()
    stored = bank.centroids[bank.index("Michelle_Yeoh")] + 0.01  # as if the bank had changed since
    request = request_for_target("Michelle_Yeoh", stored, bank=bank, mode="high", seed=7)
    assert isinstance(request, ProtectRequest) and request.mode == "high" and request.seed == 7
    assert np.array_equal(request.target[bank.extractor], stored.astype(np.float32))
    assert set(request.target) == {bank.extractor, *bank.spaces}
    fresh = request_for_target("Michelle_Yeoh", bank=bank)
    assert np.allclose(fresh.target[bank.extractor], bank.centroids[bank.index("Michelle_Yeoh")])
    assert request_for_target(None, mode="low").target is None


def test_the_readme_example_protects_a_photo(tmp_path, monkeypatch, data_dir, capsys):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Using the engine from Python") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    (tmp_path / "holiday.jpg").write_bytes((data_dir / "faces" / "John_Howard" / "John_Howard_0005.jpg").read_bytes())
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("True ")
    written = (tmp_path / "holiday-cloaked.jpg").read_bytes()
    from cloakd.core.photo.verify import verify_clean

    verify_clean(written)
