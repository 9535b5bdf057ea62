"""The install maps core/ and daemon/ under cloakd.* and lists every sub-package."""

import tomllib

from conftest import REPO


def test_every_subpackage_is_listed_in_pyproject():
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    found = set()
    for top in ("core", "daemon"):
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO).parts
            found.add(".".join(("cloakd",) + rel))
    assert found <= listed, f"add to pyproject [tool.setuptools] packages: {sorted(found - listed)}"


def test_no_torchvision_or_facenet_import_anywhere():
    import re

    bad = re.compile(r"^\s*(import|from)\s+(torchvision|facenet_pytorch)\b", re.M)
    offenders = [
        str(p.relative_to(REPO))
        for top in ("core", "daemon", "bench", "tests")
        for p in (REPO / top).rglob("*.py")
        if bad.search(p.read_text())
    ]
    assert offenders == []
