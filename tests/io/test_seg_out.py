"""DICOM SEG of a lesion mask (highdicom): readable, the mask round-trips, the source is referenced."""

import numpy as np
import pydicom
import pytest

from mammolens.data.synthetic import write_dicom
from mammolens.io.seg_out import write_lesion_seg


def test_write_lesion_seg_round_trips_the_mask(tmp_path, request):
    src = write_dicom(tmp_path / "src.dcm", (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) % 4096),
                      bits_stored=12)
    mask = np.zeros((64, 48), bool)
    mask[10:20, 5:15] = True
    out = write_lesion_seg(src, mask, tmp_path / "seg.dcm", weak=True)
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and "weak" in ds.SeriesDescription
    source = pydicom.dcmread(src)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    ref = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert np.array_equal(ds.pixel_array.astype(bool), mask)
    with pytest.raises(ValueError, match="to the original image"):
        write_lesion_seg(src, mask[:10], tmp_path / "bad.dcm")
