"""The command line imports what a command uses, no more: `mammolens --help` and every command's `--help` load
none of the heavy libraries (start-up stays ~0.2 s), and `ingest` (headers only) never loads torch."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "open_clip", "numpy", "pandas", "pyarrow", "scipy", "sklearn", "cv2", "pydicom", "PIL",
         "matplotlib", "faiss", "transformers", "timm", "torchvision", "fastapi", "uvicorn")
"""Libraries that cost from 50 ms (numpy) to seconds (torch, open_clip) to import."""

_PROBE = """
import json, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["mammolens", *json.loads(sys.argv[1])]
from mammolens.cli import main
try:
    main()
except SystemExit:
    pass
print("\\nLOADED " + json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def _loaded(args: list[str], heavy=HEAVY) -> list[str]:
    """The heavy modules loaded by ``mammolens ARGS`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args), json.dumps(heavy)], capture_output=True,
                         text=True, timeout=120)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("LOADED ")]
    assert line, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(line[-1][len("LOADED "):])


def _commands() -> list[str]:
    from mammolens.cli import app

    return sorted(c.name for c in app.registered_commands if c.name)


def test_top_level_help_imports_no_heavy_module():
    assert _loaded(["--help"]) == []


@pytest.mark.parametrize("command", _commands())
def test_command_help_imports_no_heavy_module(command):
    assert _loaded([command, "--help"]) == []


def test_ingest_imports_no_torch(tmp_path):
    """Headers only: the manifest needs pandas (seen by the probe, so it works), never torch."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "not-dicom.txt").write_text("x")
    loaded = _loaded(["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "out")],
                     heavy=("pandas", "torch", "open_clip", "torchvision", "transformers", "timm"))
    assert loaded == ["pandas"]
