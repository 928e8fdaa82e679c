"""The package list in pyproject.toml matches the source tree, and kernels/ imports as
coea_kernels (leaving the name `kernels` to Hugging Face's kernel hub package)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    on_disk = {
        ".".join(d.relative_to(ROOT).parts)
        for d in (ROOT / "coea_cli").rglob("*")
        if d.is_dir() and d.name != "__pycache__" and any(d.iterdir())
    } | {"coea_cli"}
    assert listed == on_disk | {"coea_kernels"}
    assert cfg["package-dir"] == {"coea_kernels": "kernels"}


def test_kernels_import_as_coea_kernels():
    import coea_kernels

    assert Path(coea_kernels.__file__).resolve().parent == ROOT / "kernels"
    assert callable(coea_kernels.attention)
