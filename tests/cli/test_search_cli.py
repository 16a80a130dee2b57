"""CLI tests: `mammolens index RUN CACHE` and `mammolens search RUN TEXT | --image FILE`."""

from typer.testing import CliRunner

from _app_fixtures import app_env  # noqa: F401 — session fixture
from mammolens.cli import app
from mammolens.privacy import pseudonym

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_index_and_search_cli(app_env, tmp_path):  # noqa: F811
    idx = tmp_path / "idx"
    r = _invoke("index", app_env.run, app_env.cache, "--out", idx, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "exact index of 48 images" in r.output and (idx / "index.json").is_file()

    r = _invoke("search", app_env.run, "spiculated mass upper outer quadrant", "--index", idx, "-k", 3,
                "--device", "cpu")
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 3 and [ln.split()[0] for ln in lines] == ["1", "2", "3"]
    assert all(ln.split()[2].startswith("study-") for ln in lines) and "SYN" not in r.output

    row = app_env.df.iloc[0]
    r = _invoke("search", app_env.run, "--image", app_env.cohort / row["image_path"], "--index", idx, "-k", 2,
                "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0].split()[2] == pseudonym(row["study_id"], "study")


def test_search_cli_user_errors(app_env, tmp_path):  # noqa: F811
    r = _invoke("search", app_env.run, "mass", "--index", tmp_path / "none")
    assert r.exit_code == 2 and "not an index folder" in r.output
    r = _invoke("index", app_env.run, app_env.cache, "--out", tmp_path / "i", "--kind", "annoy")
    assert r.exit_code == 2 and "index kind must be one of" in r.output
