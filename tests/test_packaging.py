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


def test_gpu_only_packages_are_an_extra():
    """triton and bitsandbytes are not installed by the plain (CPU) install: only by the
    `cuda` extra (triton on Linux only) and by `dev`, whose CPU tests use them."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {Requirement(r).name for r in project["dependencies"]}
    assert not base & {"triton", "bitsandbytes"}
    cuda = {Requirement(r).name: Requirement(r) for r in project["optional-dependencies"]["cuda"]}
    assert set(cuda) == {"triton", "bitsandbytes"}
    linux = {"sys_platform": "linux"}
    assert cuda["triton"].marker.evaluate(linux)
    assert not cuda["triton"].marker.evaluate({"sys_platform": "darwin"})


def test_cpu_path_runs_without_triton_or_bitsandbytes(tmp_path):
    """In an environment without triton and bitsandbytes (the installed packages minus those
    two), the CLI imports, DSIE and the attention run on CPU, and asking for the GPU-only
    paths names the extra to install."""
    import os
    import site
    import subprocess
    import sys

    env_dir = tmp_path / "site"
    env_dir.mkdir()
    for sp in site.getsitepackages():
        for entry in Path(sp).iterdir():
            low = entry.name.lower()
            skip = low.startswith(("triton", "bitsandbytes", "coea_kernels"))
            if skip or (env_dir / entry.name).exists():
                continue
            (env_dir / entry.name).symlink_to(entry)
    if not (env_dir / "coea_kernels").exists():  # without site, no editable-install finder
        (env_dir / "coea_kernels").symlink_to(ROOT / "kernels")
    code = """
import importlib.util
import pytest
import torch
assert importlib.util.find_spec("triton") is None
assert importlib.util.find_spec("bitsandbytes") is None
from coea_cli.cli import app
from coea_cli.errors import BadInput
from coea_cli.llm.backbone import quant_config
from coea_kernels import attention
from tests.test_dsie import tiny_model
q = torch.randn(2, 2, 8, 16)
assert attention(q, q, q, backend="auto").shape == q.shape
with pytest.raises(RuntimeError, match="coea.cuda"):
    attention(q, q, q, backend="triton")
with pytest.raises(BadInput, match="coea.cuda"):
    quant_config("4bit", "cpu")
assert quant_config("none", "cpu") is None
model = tiny_model(1)
items = torch.randint(0, 30, (2, 9))
out = model(items, torch.tensor([9, 4]), torch.tensor([0, 1]), torch.randint(0, 30, (2, 9)))
assert torch.isfinite(out["next"]).all()
print("cpu path ok")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {"PYTHONPATH": f"{ROOT}{os.pathsep}{env_dir}", "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cpu path ok" in r.stdout
