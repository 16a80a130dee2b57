"""Every command refuses a run whose ``ood.npz`` holds object arrays, the same clear way (issue 20)."""

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from _app_fixtures import app_env  # noqa: F401 — session fixture
from mammolens.cli import app
from mammolens.models.ood import OOD_FILE

runner = CliRunner()


@pytest.fixture(scope="module")
def poisoned(app_env, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("poisoned") / "run"
    shutil.copytree(app_env.run, run)
    with np.load(run / OOD_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["extra"] = np.array([{"evil": 1}], dtype=object)  # never read by the loader before this fix
    np.savez(run / OOD_FILE, **arrays)
    return run


def _commands(run, app_env, tmp):  # noqa: F811
    study = str(app_env.study_dirs()[0])
    return {
        "predict": ["predict", str(run), study, "--out", str(tmp / "p"), "--workers", "0"],
        "explain": ["explain", str(run), study, "--out", str(tmp / "e"), "--device", "cpu"],
        "explain-text": ["explain", str(run), study, "--out", str(tmp / "t"), "--map", "text", "--text", "mass",
                         "--device", "cpu"],
        "evaluate": ["evaluate", str(run), "--data", str(app_env.manifest), "--out", str(tmp / "v"),
                     "--workers", "0", "--n-boot", "10", "--gallery", "0", "--device", "cpu"],
        "serve": ["serve", str(run), "--port", "1"],
    }


@pytest.mark.parametrize("command", ["predict", "explain", "explain-text", "evaluate", "serve"])
def test_every_command_refuses_object_arrays_in_ood(poisoned, app_env, tmp_path, command, monkeypatch):  # noqa: F811
    monkeypatch.delenv("MAMMOLENS_DEBUG", raising=False)
    import mammolens.serve.app as served

    monkeypatch.setattr(served, "serve", lambda *a, **k: pytest.fail("the server started"))
    r = runner.invoke(app, _commands(poisoned, app_env, tmp_path)[command])
    assert r.exit_code == 2, (r.output, r.exception)
    assert "ood.npz" in r.stderr and "object arrays" in r.stderr and "delete it" in r.stderr, r.stderr
