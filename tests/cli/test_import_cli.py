"""`mammolens import NAME SRC --out DIR` through typer's CliRunner."""

import pandas as pd
import typer.main
from typer.testing import CliRunner

from mammolens.cli import app


def _args(*args: str) -> list[str]:
    # while `import` is the only registered command typer runs it without its name
    return ["import", *args] if hasattr(typer.main.get_command(app), "commands") else list(args)


def test_import_cli_mias_writes_manifest(mini_mias, tmp_path):
    out = tmp_path / "mias"
    result = CliRunner().invoke(app, _args("mias", str(mini_mias), "--out", str(out)))
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(out / "manifest.parquet")
    assert len(df) == 322 and df["patient_id"].nunique() == 161
    assert df["mias_density"].value_counts().to_dict() == {"D": 112, "F": 106, "G": 104}
    assert "mias_density  D: 112  F: 106  G: 104" in result.output
    assert "density       missing: 322" in result.output
    assert not (out / "errors.csv").exists()


def test_import_cli_unknown_dataset_exits_2(tmp_path):
    result = CliRunner().invoke(app, _args("nope", str(tmp_path), "--out", str(tmp_path / "o")))
    assert result.exit_code == 2
    assert "choose one of: mias" in result.output


def test_import_cli_missing_label_file_exits_2(tmp_path):
    result = CliRunner().invoke(app, _args("vindr", str(tmp_path), "--out", str(tmp_path / "o")))
    assert result.exit_code == 2
    assert "breast-level_annotations.csv" in result.output
    assert not (tmp_path / "o" / "manifest.parquet").exists()


def test_import_cli_cbis_without_images_exits_3_naming_the_folder(tmp_path):
    src = tmp_path / "cbis"
    src.mkdir()
    pd.DataFrame({"patient_id": ["P_00001"], "breast_density": ["3"], "left or right breast": ["LEFT"],
                  "image view": ["CC"], "abnormality type": ["mass"], "pathology": ["BENIGN"],
                  "image file path": ["Mass-Training_P_00001_LEFT_CC/1.3/1.4/000000.dcm"]}
                 ).to_csv(src / "mass_case_description_train_set.csv", index=False)
    result = CliRunner().invoke(app, _args("cbis-ddsm", str(src), "--out", str(tmp_path / "o")))
    assert result.exit_code == 3, result.output
    out = " ".join(result.output.split())
    assert "nothing was read" in out and str(src) in out
    assert "SRC/CBIS-DDSM" in out and "download the image folders" in out and "--no-check-files" in out
    result = CliRunner().invoke(app, _args("cbis-ddsm", str(src), "--out", str(tmp_path / "o"), "--no-check-files"))
    assert result.exit_code == 0, result.output
