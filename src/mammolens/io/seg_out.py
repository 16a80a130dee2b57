"""DICOM Segmentation (SEG) of a predicted lesion mask, in the source image's study (highdicom).

``write_lesion_seg(source, mask, out_path, *, label="lesion", description=...)`` writes a binary SEG with one
segment ("Mass", SNOMED CT, category "Morphologically abnormal structure", algorithm type AUTOMATIC,
algorithm "mammolens") referencing the source image; ``mask`` is ``[H, W]`` at the source's size (map a tile's
mask back with ``transforms.breast.to_original`` first). Like the other DICOM outputs it carries the source's
identifiers, so it stays in the source's archive. A weak mask (trained on circles or boxes) says so in the
series description. Needs highdicom (``dicom`` extra, installed with ``all``).
"""

from __future__ import annotations

import copy
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["write_lesion_seg"]

TYPE2_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "AccessionNumber")
"""Attributes the SEG copies from its source that must exist (empty allowed); added empty when missing."""


def write_lesion_seg(source, mask, out_path: str | PathLike, *, label: str = "lesion", weak: bool = False,
                     description: str = "mammolens lesion segmentation") -> Path:
    """Write a binary DICOM SEG of ``mask`` (bool ``[H, W]``) over ``source`` (a path or a pydicom Dataset).

    Raises:
        ValueError: the mask's shape is not the source image's ``Rows x Columns``.
    """
    import pydicom

    from mammolens._version import __version__
    from mammolens._optional import optional_import

    hd = optional_import("highdicom", "all", "DICOM SEG output")
    from pydicom.sr.codedict import codes

    ds = pydicom.dcmread(source) if isinstance(source, (str, PathLike)) else copy.deepcopy(source)
    for keyword in TYPE2_SOURCE:  # type 2 (may be empty) in the SEG; absent in many sources
        if keyword not in ds:
            setattr(ds, keyword, "")
    m = np.asarray(mask, dtype=bool)
    if m.shape != (int(ds.Rows), int(ds.Columns)):
        raise ValueError(f"mask is {m.shape[0]}x{m.shape[1]} but the source image is {ds.Rows}x{ds.Columns}; map the "
                         "tile's mask to the original image first (transforms.breast.to_original)")
    algo = hd.AlgorithmIdentificationSequence(name="mammolens", version=str(__version__),
                                              family=codes.DCM.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo)
    text = f"{description}{' (weak masks)' if weak else ''}"[:64]
    seg = hd.seg.Segmentation(
        source_images=[ds], pixel_array=m[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
        series_instance_uid=hd.UID(), series_number=990, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="mammolens", manufacturer_model_name="mammolens dense head", software_versions=str(__version__),
        device_serial_number="0", series_description=text, omit_empty_frames=False)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out
