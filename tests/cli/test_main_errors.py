"""The console entry point turns user errors into one line on stderr and exit code 2 (no traceback)."""

import subprocess
import sys


def test_main_missing_run_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mammolens.cli", "evaluate", str(tmp_path / "no_run"),
                           "--data", str(tmp_path / "x.parquet")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert "no_run" in proc.stderr and "Traceback" not in proc.stderr


def test_main_missing_cache_says_what_to_do(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny-clip\nepochs: 1\n")
    proc = subprocess.run([sys.executable, "-m", "mammolens.cli", "train", "--config", str(cfg),
                           "--set", f"out_dir={tmp_path / 'run'}", "--set", f"data.cache={tmp_path / 'nocache'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "nocache" in proc.stderr and "mammolens preprocess" in proc.stderr
