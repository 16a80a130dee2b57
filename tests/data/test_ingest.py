import numpy as np
import pandas as pd
import pytest

from mammolens.data.ingest import ingest, read_header, scan_files
from mammolens.data.manifest import read_manifest


def write_mg_dicom(path, patient="P1", study="1.2.3", lat="L", view="CC", frames=1, rows=32, cols=24, seed=0):
    """A minimal uncompressed mammography DICOM (test fixture writer, not a reader)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop = "1.2.840.10008.5.1.4.1.1.13.1.3" if frames > 1 else "1.2.840.10008.5.1.4.1.1.1.2"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, study, generate_uid()
    ds.Modality, ds.Manufacturer = "MG", "HOLOGIC, Inc."
    ds.ImageLaterality, ds.ViewPosition = lat, view
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    px = np.random.default_rng(seed).integers(0, 4096, (frames, rows, cols) if frames > 1 else (rows, cols))
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = px.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def archive(tmp_path):
    root = tmp_path / "archive"
    write_mg_dicom(root / "p1" / "a.dcm", "P1", "1.1", "L", "CC", seed=1)
    write_mg_dicom(root / "p1" / "IMG0002", "P1", "1.1", "R", "MLO", seed=2)  # no suffix
    write_mg_dicom(root / "p2" / "dbt.dcm", "P2", "2.1", "R", "CC", frames=5, seed=3)
    good = write_mg_dicom(root / "p2" / "trunc.dcm", "P2", "2.1", "L", "CC", seed=4)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) - 600])  # truncated pixel data
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").write_text("skipped")
    return root


def test_scan_files_skips_hidden_and_excluded(archive):
    names = [p.name for p in scan_files(archive)]
    assert names == ["notes.txt", "IMG0002", "a.dcm", "dbt.dcm", "trunc.dcm"]
    assert [p.name for p in scan_files(archive, patterns=("*.dcm",))] == ["a.dcm", "dbt.dcm", "trunc.dcm"]
    assert [p.name for p in scan_files(archive, exclude=[archive / "p1"])] == ["notes.txt", "dbt.dcm", "trunc.dcm"]


def test_read_header_metadata_and_errors(archive):
    meta = read_header(archive / "p2" / "dbt.dcm")
    assert meta["modality"] == "DBT" and meta["n_frames"] == 5 and meta["laterality"] == "R"
    assert read_header(archive / "p1" / "IMG0002")["view"] == "MLO"
    from mammolens.io import ImageReadError

    with pytest.raises(ImageReadError, match="truncated"):
        read_header(archive / "p2" / "trunc.dcm")
    with pytest.raises(ImageReadError):
        read_header(archive / "notes.txt")


@pytest.mark.parametrize("workers", [0, 2])
def test_ingest_writes_manifest_and_errors(archive, tmp_path, workers):
    out = tmp_path / f"out{workers}"
    manifest, errors = ingest(archive, out, workers=workers, progress=False)
    assert sorted(manifest["image_path"]) == ["../archive/p1/IMG0002", "../archive/p1/a.dcm", "../archive/p2/dbt.dcm"]
    assert sorted(Path_(p) for p in errors["path"]) == ["notes.txt", "trunc.dcm"]
    assert errors["reason"].str.len().min() > 5
    m = read_manifest(out / "manifest.parquet")  # valid, paths resolve
    assert all(pd.io.common.file_exists(p) for p in m["image_path"])
    row = m.set_index(m["image_path"].str.rsplit("/", n=1).str[-1])
    assert row.loc["dbt.dcm", "modality"] == "DBT" and pd.isna(row.loc["dbt.dcm", "frame"])
    assert row.loc["a.dcm", "laterality"] == "L" and row.loc["IMG0002", "view"] == "MLO"
    assert row.loc["a.dcm", "manufacturer"] != "" and (m["density"] == "").all()
    assert row.loc["a.dcm", "patient_id"] == "P1" and row.loc["a.dcm", "study_id"] == "1.1"
    e = pd.read_csv(out / "errors.csv")
    assert list(e.columns) == ["path", "reason", "kind"] and len(e) == 2 and set(e["kind"]) == {"error"}


def Path_(p):
    return p.rsplit("/", 1)[-1]


def test_ingest_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="archive folder not found"):
        ingest(tmp_path / "nope", tmp_path / "out", progress=False)


def test_ingest_then_build_cache_end_to_end(archive, tmp_path):
    from mammolens.data.cache import PreprocessCfg, build_cache, open_cache

    ingest(archive, tmp_path / "out", workers=0, progress=False)
    from mammolens.transforms.quality import QualityCfg

    # 32x24 test files: below the quality gate's min_side, which this test is not about
    c = open_cache(build_cache(tmp_path / "out" / "manifest.parquet", tmp_path / "cache",
                               PreprocessCfg(size=16), workers=0, progress=False, quality=QualityCfg(enabled=False)))
    assert (c.index["status"] == "done").all() and len(c) == 3
    assert c.images.reshape(3, -1).max(axis=1).min() > 0
    conv = c.meta["conversion_summary"]
    assert conv  # the reader's conversion records are summarised


def test_ingest_keeps_non_mammograms_out_of_the_manifest(tmp_path):
    from mammolens.data.synthetic import write_non_mammogram

    root = tmp_path / "archive"
    write_mg_dicom(root / "mg.dcm", "P1", "1.1", "L", "CC")
    for kind in ("dx-abdomen", "cr-test-pattern", "mg-flatfield"):
        write_non_mammogram(root / f"{kind}.dcm", kind)
    manifest, errors = ingest(root, tmp_path / "out", workers=0, progress=False)
    assert list(manifest["image_path"]) == ["../archive/mg.dcm"] and list(manifest["modality"]) == ["DM"]
    reasons = {Path_(p): r for p, r in zip(errors["path"], errors["reason"])}
    assert reasons == {
        "cr-test-pattern.dcm": "not a mammogram: quality-control image (SeriesDescription says TEST PATTERN)",
        "dx-abdomen.dcm": "not a mammogram: DX image of ABDOMEN",
        "mg-flatfield.dcm": "not a mammogram: quality-control image (ImageType says FLATFIELD)",
    }


def test_ingest_counts_a_processing_copy_once(tmp_path):
    import pydicom

    root = tmp_path / "archive"
    pres = write_mg_dicom(root / "pres.dcm", "P1", "1.1", "L", "CC")
    proc = write_mg_dicom(root / "proc.dcm", "P1", "1.1", "L", "CC", seed=1)
    other = write_mg_dicom(root / "proc_other_view.dcm", "P1", "1.1", "L", "MLO", seed=2)
    for path, intent in ((pres, "FOR PRESENTATION"), (proc, "FOR PROCESSING"), (other, "FOR PROCESSING")):
        ds = pydicom.dcmread(path)
        ds.PresentationIntentType = intent
        ds.save_as(path)
    manifest, errors = ingest(root, tmp_path / "out", workers=0, progress=False)
    assert sorted(Path_(p) for p in manifest["image_path"]) == ["pres.dcm", "proc_other_view.dcm"]
    assert [Path_(p) for p in errors["path"]] == ["proc.dcm"]
    assert errors["reason"][0] == "For Processing duplicate of a For Presentation image; not counted (pres.dcm)"


@pytest.mark.timeout(120)
def test_ingest_survives_hanging_crashing_and_panicking_files(archive, tmp_path, monkeypatch):
    import mammolens.data.ingest as ing
    from _faults import REASONS, copies, misbehave

    copies(archive / "p1" / "a.dcm", archive / "bad", ".dcm")
    real = ing.read_header

    def faulty(path):
        misbehave(path)
        return real(path)

    monkeypatch.setattr(ing, "read_header", faulty)  # forked workers inherit the patch
    monkeypatch.setenv("MAMMOLENS_FILE_TIMEOUT", "3")
    m, e = ingest(archive, tmp_path / "out", workers=2, progress=False)
    assert sorted(p.rsplit("/", 1)[-1] for p in m["image_path"]) == ["IMG0002", "a.dcm", "dbt.dcm"]
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in zip(e["path"], e["reason"])}
    assert {f"{k}.dcm": v for k, v in REASONS.items()}.items() <= reasons.items()
    assert set(reasons) == {"hang.dcm", "crash.dcm", "segv.dcm", "panic.dcm", "trunc.dcm", "notes.txt"}
