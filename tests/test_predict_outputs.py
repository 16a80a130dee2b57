"""Issue 20, output side: one odd file never stops `predict`, output names are bounded, identity stays out.

Each test builds its hostile inputs from the shared synthetic cohort (``app_env``) in ``tmp_path``.
"""

import json
import os
import shutil
import signal
import stat
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from _app_fixtures import app_env  # noqa: F401 — session fixture
from mammolens.cli import app
from mammolens.workflows import predict_to_dir

runner = CliRunner()


def _raw(folder: Path, name: bytes) -> str:
    """A path whose last component is the raw bytes ``name`` (not valid UTF-8 on purpose)."""
    return os.fsdecode(os.fsencode(str(folder)) + b"/" + name)


def _copy_with(src: Path, dst: str | Path, **header) -> str:
    """``src`` rewritten to ``dst`` with header fields replaced (``None`` deletes one)."""
    ds = pydicom.dcmread(src)
    for k, v in header.items():
        if v is None:
            if k in ds:
                delattr(ds, k)
        else:
            setattr(ds, k, v)
    os.makedirs(os.path.dirname(os.fspath(dst)), exist_ok=True)
    ds.save_as(dst)
    return os.fspath(dst)


def _output_text(out: Path) -> str:
    """Every table / JSON of a predict folder, and every file name under it, as one text."""
    texts = [p.read_text(encoding="utf-8") for p in out.iterdir() if p.suffix in (".csv", ".json")]
    names = [os.fsencode(str(p.relative_to(out))).decode("utf-8", "backslashreplace") for p in out.rglob("*")]
    return "\n".join(texts + names)


# ------------------------------------------------------------------------------- non-UTF-8 file names
def test_predict_non_utf8_file_names_survive_escaped(app_env, tmp_path):  # noqa: F811
    src = app_env.study_files(0)
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(src[0], _raw(inp, b"caf\xe9.dcm"))
    shutil.copy(src[1], inp / "ok.dcm")
    Path(_raw(inp, b"bad\xe9.dcm")).write_bytes(b"not a dicom" * 30)
    res = predict_to_dir(app_env.run, [inp], tmp_path / "out", workers=0, progress=False)
    assert res["n_images"] == 2 and res["n_failed"] == 1
    images = pd.read_csv(tmp_path / "out" / "images.csv")
    assert sorted(images["file"]) == ["caf\\xe9.dcm", "ok.dcm"]
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert list(errors["file"]) == ["bad\\xe9.dcm"]
    payload = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert {r["file"] for r in payload["images"]} == {"caf\\xe9.dcm", "ok.dcm"}
    assert all((tmp_path / "out" / o).is_file() for o in images["overlay"])


def test_display_path_escapes_undecodable_bytes():
    from mammolens.privacy import display_path

    assert display_path(os.fsdecode(b"caf\xe9.dcm")) == "caf\\xe9.dcm"
    assert display_path(b"a/caf\xe9.dcm") == "a/caf\\xe9.dcm"
    assert display_path("plain/é.dcm") == "plain/é.dcm"
    assert display_path(Path("x") / os.fsdecode(b"\xff")).encode("utf-8") == b"x/\\xff"


# ----------------------------------------------------------------------------- bounded output names
def test_predict_long_deep_path_gives_bounded_overlay_names(app_env, tmp_path):  # noqa: F811
    inp = tmp_path / "in"
    deep = inp.joinpath(*(["d" * 60] * 6))
    deep.mkdir(parents=True)
    shutil.copy(app_env.study_files(0)[0], deep / ("b" * 200 + ".dcm"))
    shutil.copy(app_env.study_files(0)[1], inp / "short.dcm")
    out = tmp_path / "out"
    res = predict_to_dir(app_env.run, [inp], out, workers=0, progress=False)
    assert res["n_images"] == 2 and res["n_failed"] == 0
    images = pd.read_csv(out / "images.csv")
    names = [p.name for p in (out / "overlays").iterdir()]
    assert len(names) == 2 and max(len(n.encode()) for n in names) <= 96
    # overlay paths relative to the output folder (the tables can move with their folder)
    assert all(not os.path.isabs(o) and o.startswith("overlays/") for o in images["overlay"])
    assert sorted(Path(o).name for o in images["overlay"]) == sorted(names)


def test_overlay_name_is_short_stem_plus_hash():
    from mammolens.inference import overlay_name

    a, b = overlay_name("x/" + "a" * 300 + ".dcm"), overlay_name("y/" + "a" * 300 + ".dcm")
    assert a != b and len(a.encode()) <= 96 and a.endswith("_gradcam.png")
    assert overlay_name("p/L_CC.dcm").startswith("L_CC_")
    assert overlay_name(os.fsdecode(b"caf\xe9.dcm")).isascii()


# ----------------------------------------------------------------- FIFOs, loops, directories, devices
def _alarm(seconds):
    def fail(*_):
        raise TimeoutError("predict waited on a special file")

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_lists_special_files_without_waiting(app_env, tmp_path, workers, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MAMMOLENS_FILE_TIMEOUT", "600")  # a wait would be seen
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(app_env.study_files(0)[0], inp / "ok.dcm")
    os.mkfifo(inp / "pipe.dcm")
    (inp / "folder.dcm").mkdir()
    os.symlink(inp / "loop_b", inp / "loop_a")
    os.symlink(inp / "loop_a", inp / "loop_b")
    os.symlink("/dev/null", inp / "null.dcm")
    _alarm(120)
    try:
        res = predict_to_dir(app_env.run, [inp, inp / "pipe.dcm"], tmp_path / "out", workers=workers,
                             progress=False, overlays=False, dicom=False)
    finally:
        signal.alarm(0)
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert sorted(errors["file"]) == ["folder.dcm", "loop_a", "loop_b", "null.dcm", "pipe.dcm"]
    reasons = dict(zip(errors["file"], errors["reason"]))
    assert "FIFO" in reasons["pipe.dcm"] and "directory" in reasons["folder.dcm"]
    assert "symlink loop" in reasons["loop_a"] and "device" in reasons["null.dcm"]
    assert res["n_images"] == 1


def test_file_type_problem_from_lstat(tmp_path):
    from mammolens.inference import file_type_problem

    (tmp_path / "f.dcm").write_bytes(b"x")
    os.mkfifo(tmp_path / "p")
    assert file_type_problem(tmp_path / "f.dcm") is None
    assert "FIFO" in file_type_problem(tmp_path / "p")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "p").st_mode)  # nothing opened it


# ---------------------------------------------------------------------------- identity in folder names
NAME = "ZZNAME^ALICE"
ACCESSION = "ACC778899"


@pytest.fixture
def identified(app_env, tmp_path):  # noqa: F811
    """A study exported the hospital way: folders and files named after the patient and the accession."""
    inp = tmp_path / "export"
    for i, src in enumerate(app_env.study_files(0)):
        folder = inp / NAME / f"{ACCESSION}_mammo" / ("Zzname Alice" if i % 2 else "zzname_alice")
        _copy_with(src, folder / f"{NAME}_{i + 1}.dcm", PatientName=NAME, AccessionNumber=ACCESSION)
    (inp / NAME / "ZZNAME^ALICE_broken.dcm").write_bytes(b"broken" * 40)
    os.mkfifo(inp / "pipe.dcm")  # listed, never opened (explain too)
    return inp


def _leaks(text: str) -> list[str]:
    low = text.lower()
    return [w for w in ("alice", "zzname", ACCESSION.lower(), "syn0001") if w in low]


def test_predict_pseudonymises_patient_name_and_accession_in_paths(app_env, identified, tmp_path, capfd):  # noqa: F811
    out = tmp_path / "out"
    r = runner.invoke(app, ["predict", str(app_env.run), str(identified), "--out", str(out), "--workers", "0"])
    assert r.exit_code == 1, r.output  # the broken file
    assert not _leaks(_output_text(out)), _leaks(_output_text(out))
    assert not _leaks(r.output), r.output
    captured = capfd.readouterr()
    assert not _leaks(captured.out + captured.err)
    images = pd.read_csv(out / "images.csv")
    assert len(images) == 4 and images["file"].str.contains("name-").all()
    # with --include-ids the tables keep the real names
    out2 = tmp_path / "out2"
    runner.invoke(app, ["predict", str(app_env.run), str(identified), "--out", str(out2), "--workers", "0",
                        "--include-ids", "--no-overlays", "--no-dicom"])
    assert "ZZNAME^ALICE" in (out2 / "images.csv").read_text()


def test_predict_files_web_response_has_no_name(app_env, identified):  # noqa: F811
    from mammolens.inference import Predictor

    p = Predictor.from_run(app_env.run, device="cpu", workers=0)
    res = p.predict_files(sorted(identified.rglob("*.dcm")))
    text = json.dumps({k: v for k, v in res.items() if k != "images"}) + json.dumps(
        [{k: v for k, v in im.items() if k != "overlay_png"} for im in res["images"]])
    assert len(res["images"]) == 4 and not _leaks(text), text


def test_scrub_path_catches_every_form_of_a_patient_name():
    from mammolens.privacy import ids_of, scrub_path

    ids = ids_of({"patient_name": "ZZNAME^ALICE^B", "accession_number": "ACC778899"})
    for path in ("ZZNAME^ALICE^B/x.dcm", "zzname alice b/x.dcm", "Zzname_Alice_B_2.dcm", "ZZNAME ALICE/1.dcm",
                 "ACC778899/ZZNAME^ALICE^B_1.dcm", "alice.zzname/x.dcm"):
        assert not _leaks(scrub_path(path, ids)), (path, scrub_path(path, ids))
    assert scrub_path("L_CC.dcm", ids) == "L_CC.dcm"


def test_explain_text_map_does_not_print_the_input_path(app_env, identified, tmp_path):  # noqa: F811
    r = runner.invoke(app, ["explain", str(app_env.run), str(identified), "--out", str(tmp_path / "e"),
                            "--map", "text", "--text", "a mass", "--device", "cpu"])
    assert r.exit_code == 1, r.output  # the broken file
    assert str(identified) not in r.output and not _leaks(r.output), r.output
    assert "FAILED pipe.dcm: a FIFO" in r.output


# ------------------------------------------------------------------------------- formula injection
def test_predict_tables_escape_formula_cells(app_env, tmp_path):  # noqa: F811
    inp = tmp_path / "in"
    (inp / "=HYPERLINK(1)").mkdir(parents=True)
    shutil.copy(app_env.study_files(0)[0], inp / "=HYPERLINK(1)" / "a.dcm")
    shutil.copy(app_env.study_files(0)[1], inp / "@SUM(1).dcm")
    (inp / "-bad.dcm").write_bytes(b"x" * 300)
    out = tmp_path / "out"
    predict_to_dir(app_env.run, [inp], out, workers=0, progress=False, dicom=False)
    images = pd.read_csv(out / "images.csv")
    assert sorted(images["file"]) == ["'=HYPERLINK(1)/a.dcm", "'@SUM(1).dcm"]
    assert list(pd.read_csv(out / "errors.csv")["file"]) == ["'-bad.dcm"]
    assert images["prob_A"].dtype.kind == "f"


# ----------------------------------------------------------------------------------- DICOM outputs
def test_predict_dicom_outputs_isolated_per_study(app_env, tmp_path):  # noqa: F811
    inp = tmp_path / "in"
    s0, s1, s2 = (app_env.study_files(i) for i in range(3))
    for f in s0:  # a view name where a PatientOrientation belongs: sanitised, the outputs are written
        _copy_with(f, inp / "orient" / f.name, PatientOrientation="CC")
    for f in s1:  # an empty SOPClassUID: the image is predicted, its study's DICOM output cannot be made
        _copy_with(f, inp / "nosop" / f.name, SOPClassUID="")
    (inp / "fine").mkdir(parents=True)
    for f in s2:
        shutil.copy(f, inp / "fine" / f.name)
    out = tmp_path / "out"
    r = runner.invoke(app, ["predict", str(app_env.run), str(inp), "--out", str(out), "--workers", "0"])
    assert r.exit_code == 1, (r.output, r.exception)
    images = pd.read_csv(out / "images.csv")
    assert len(images) == 12
    srs = sorted((out / "dicom").glob("*/density_sr.dcm"))
    assert len(srs) == 2 and len(list((out / "dicom").glob("*/overlay_*.dcm"))) == 8
    for sc in (out / "dicom").glob("*/overlay_*.dcm"):  # the view name "CC" never reaches an output
        assert "C" not in str(pydicom.dcmread(sc).get("PatientOrientation", ""))
    errors = pd.read_csv(out / "errors.csv")
    assert len(errors) == 1 and "DICOM output" in errors["reason"].iloc[0] and "SOPClassUID" in errors["reason"].iloc[0]
    assert errors["file"].iloc[0].startswith("study-")


def test_dicom_outputs_use_prediction_records_not_a_second_read(app_env, tmp_path, monkeypatch):  # noqa: F811
    """The SR and the Secondary Captures come from what the workers read: no header is parsed again and
    no overlay PNG is re-read."""
    import PIL.Image

    import mammolens.workflows as wf

    calls = []
    real_read = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: calls.append(a) or real_read(*a, **k))
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: calls.append(("png", a)) or real_open(*a, **k))
    seen = {}
    real_write = wf._write_dicom_outputs

    def spy(*a, **k):
        before = len(calls)
        n = real_write(*a, **k)
        seen["calls"] = calls[before:]
        return n

    monkeypatch.setattr(wf, "_write_dicom_outputs", spy)
    res = predict_to_dir(app_env.run, [app_env.study_dirs()[0]], tmp_path / "o", workers=0, progress=False)
    assert res["n_sr"] == 1 and seen["calls"] == []


def test_predict_counts_a_repeated_sop_instance_uid_once(app_env, tmp_path):  # noqa: F811
    """The same image twice in an archive (a copy under another name) is predicted once; the copy is listed."""
    src = app_env.study_files(0)
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(src[0], inp / "a.dcm")
    shutil.copy(src[0], inp / "z_copy.dcm")
    shutil.copy(src[1], inp / "b.dcm")
    res = predict_to_dir(app_env.run, [inp], tmp_path / "out", workers=0, progress=False)
    assert res["n_images"] == 2 and res["n_failed"] == 1
    images = pd.read_csv(tmp_path / "out" / "images.csv")
    assert sorted(images["file"]) == ["a.dcm", "b.dcm"]
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert list(errors["file"]) == ["z_copy.dcm"]
    assert errors["reason"][0] == "duplicate SOPInstanceUID: the same image as a.dcm; not counted"
