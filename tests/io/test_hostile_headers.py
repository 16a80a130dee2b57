"""Issue 20, input side: header values out of range, body parts, frame counts and pixel lengths that
must be refused (or emptied) from the header alone, before anything large is allocated."""

import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from mammolens.data.synthetic import write_dicom
from mammolens.io import ImageReadError, read_image
from mammolens.io.dicom import dicom_meta, read_dicom
from mammolens.io.gating import gate_header


@pytest.mark.parametrize("modality, body, view", [
    ("DX", "CHEST", "CC"), ("CR", "ABDOMEN", "MLO"), ("DX", "HAND", "CC"), ("CR", "SKULL", "ML"),
])
def test_gate_refuses_another_body_part_even_with_a_mammography_view(modality, body, view):
    assert gate_header({"Modality": modality, "BodyPartExamined": body}, view, "ViewPosition") == (
        False, f"not a mammogram: {modality} image of {body}")


def test_gate_without_a_body_part_keeps_todays_rule():
    assert gate_header({"Modality": "DX"}, "CC", "ViewPosition") == (True, "")
    assert gate_header({"Modality": "DX", "BodyPartExamined": "BREAST"}, "CC", "ViewPosition") == (True, "")
    assert gate_header({"Modality": "MG", "BodyPartExamined": "CHEST"}, "CC", "ViewPosition") == (True, "")


def _dm(tmp_path, name="a.dcm", **kw):
    return write_dicom(tmp_path / name, np.arange(48, dtype=np.uint16).reshape(8, 6), bits_stored=12, **kw)


@pytest.mark.parametrize("age, problem", [("130Y", "130Y"), ("999Y", "999Y"), ("abcd", "abcd"), ("-5Y", "-5Y")])
def test_out_of_range_age_is_empty_with_a_warning(tmp_path, age, problem):
    path = _dm(tmp_path)
    ds = pydicom.dcmread(path)
    ds.PatientAge = age
    ds.save_as(path)
    meta = dicom_meta(pydicom.dcmread(path, stop_before_pixels=True))
    assert meta["age"] is None
    assert any("PatientAge" in w and problem in w for w in meta["header_warnings"])
    assert dicom_meta(pydicom.dcmread(_dm(tmp_path, "ok.dcm"), stop_before_pixels=True))["header_warnings"] == []


def test_unparseable_pixel_spacing_is_empty_with_a_warning(tmp_path):
    path = _dm(tmp_path)
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = ["0.1000", "0.1000"]
    ds.save_as(path)
    path.write_bytes(path.read_bytes().replace(b"0.1000\\0.1000", b"0.1000\\nope00"))
    meta = dicom_meta(pydicom.dcmread(path, stop_before_pixels=True))
    assert meta["pixel_spacing"] is None and any("PixelSpacing" in w for w in meta["header_warnings"])


def _probe(code: str, **env) -> tuple[str, int]:
    """Run ``code`` in a fresh interpreter; (its stdout, its peak RSS in KiB)."""
    script = ("import resource, sys\n" + code +
              "\nprint('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    return "\n".join(lines[:-1]), int(lines[-1].split()[1])


_READ = ("from mammolens.io import read_image, ImageReadError\n"
         "import pydicom, mammolens.io.dicom\n"
         "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
         "try:\n    read_image(sys.argv[1] if len(sys.argv) > 1 else {path!r})\n"
         "except ImageReadError as e:\n    print('refused', e.problem)\n"
         "print('GROWTH', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n")


def test_huge_number_of_frames_is_refused_before_anything_allocates(tmp_path):
    path = write_dicom(tmp_path / "frames.dcm", np.zeros((2, 8, 6), np.uint16), sop_class="dbt", bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 30_000_000
    del ds.PerFrameFunctionalGroupsSequence
    ds.save_as(path)
    out, _ = _probe(_READ.format(path=str(path)))
    assert "refused" in out and "30,000,000 frames" in out and "exceeds the pixel budget" in out
    growth = int(out.split("GROWTH")[1])
    assert growth < 100_000, f"peak RSS grew by {growth} KiB before the refusal"  # list(range(3e7)) is ~1.2 GB


@pytest.mark.parametrize("budget, message", [
    ("", "more than Rows x Columns x Frames x BitsAllocated (8 x 6 x 1 x 16) declares"),
    ("1e8", "declares 2,147,483,648 bytes, more than 100,000,000 pixels of 2 byte(s): it exceeds the pixel budget"),
])
def test_pixel_data_longer_than_the_budget_is_refused_unread(tmp_path, budget, message):
    """A sparse file whose pixel element declares 2 GB is refused from its header and size, never read."""
    path = _dm(tmp_path, "sparse.dcm")
    data = path.read_bytes()
    tag = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) explicit VR OB/OW: tag, VR, 2 reserved, 4-byte length
    assert tag > 0 and data[tag + 4:tag + 6] in (b"OW", b"OB")
    declared = 2 * 1024**3
    head = data[:tag + 8] + declared.to_bytes(4, "little")
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + declared)  # sparse: 2 GB on paper, nothing on disk
    out, _ = _probe(_READ.format(path=str(path)), MAMMOLENS_MAX_PIXELS=budget)
    assert "refused" in out and message in out, out
    growth = int(out.split("GROWTH")[1])
    assert growth < 100_000, f"peak RSS grew by {growth} KiB: the pixel data were read"


def test_partial_tomosynthesis_volume_is_refused_not_a_mip(tmp_path):
    stack = np.arange(5 * 8 * 6, dtype=np.uint16).reshape(5, 8, 6)
    path = write_dicom(tmp_path / "dbt.dcm", stack, sop_class="dbt", bits_stored=12)
    ds = pydicom.dcmread(path)
    assert len(ds.PerFrameFunctionalGroupsSequence) == 5
    ds.NumberOfFrames = 2
    ds.PixelData = stack[:2].tobytes()
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="partial tomosynthesis volume: 2 frame.* 5 frames"):
        read_image(path)
    from mammolens.io.dicom import read_dicom_header

    with pytest.raises(ImageReadError, match="partial tomosynthesis volume"):  # ingest lists it too
        read_dicom_header(path)
    assert read_image(write_dicom(tmp_path / "full.dcm", stack, sop_class="dbt", bits_stored=12)).shape == (8, 6)


def test_display_path_escapes_undecodable_bytes_and_resolve_path_finds_the_file(tmp_path):
    from mammolens.io import display_path, resolve_path

    raw = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.dcm")
    path = _dm(tmp_path, "x.dcm")
    os.rename(path, raw)
    shown = display_path(raw)
    assert shown.endswith("caf\\xe9.dcm") and shown.encode("utf-8")  # printable, writable as UTF-8
    assert resolve_path(shown) == raw and resolve_path(raw) == raw
    assert display_path("plain/é.dcm") == "plain/é.dcm"
    assert read_image(shown).shape == (8, 6) and read_dicom(shown).shape == (8, 6)
