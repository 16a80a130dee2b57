"""Shared fixtures. Real data comes through `shared_data` only; it skips when ../shared/data is absent."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("MAMMOLENS_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _pseudonym_key(tmp_path_factory):
    """Tests pseudonymise with a throw-away key file, never the user's per-installation key."""
    old = {k: os.environ.pop(k, None) for k in ("MAMMOLENS_SECRET", "MAMMOLENS_SECRET_FILE")}
    os.environ["MAMMOLENS_SECRET_FILE"] = str(tmp_path_factory.mktemp("key") / "secret")
    yield
    for k, v in old.items():
        os.environ.pop(k, None)
        if v is not None:
            os.environ[k] = v


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real mammograms (../shared/data, or $MAMMOLENS_SHARED_DATA); skips if absent."""
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return path


@pytest.fixture(scope="session")
def mini_mias(shared_data) -> Path:
    path = shared_data / "mini-mias"
    if not (path / "Info.txt").is_file():
        pytest.skip(f"{path} has no Info.txt")
    return path


@pytest.fixture(scope="session")
def dciodvfy():
    """``check(path) -> [finding lines]`` from dicom3tools' DICOM validator (Error/Warning lines, minus its
    note about its own dictionary); skips when ``dciodvfy`` is not installed (Debian package dicom3tools)."""
    import shutil
    import subprocess

    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")

    def check(path) -> list[str]:
        out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
        return [ln for ln in (out.stdout + out.stderr).splitlines()
                if ln.startswith(("Error", "Warning")) and "Dicom dictionary" not in ln]

    return check
