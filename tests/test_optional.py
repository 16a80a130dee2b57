"""``optional_import``: one helper for optional dependencies, naming the extra to install."""

import json

import pytest

from mammolens._optional import optional_import


def test_optional_import_message_names_the_extra():
    with pytest.raises(ImportError, match=r'pip install -e "\.\[serve\]"') as ex:
        optional_import("no_such_module_xyz", "serve", "the web app")
    assert "the web app" in str(ex.value) and "no_such_module_xyz" in str(ex.value)


def test_optional_import_returns_the_first_importable_name():
    assert optional_import(("no_such_module_xyz", "json"), "serve") is json


def test_optional_import_is_used_for_the_extras(monkeypatch):
    """The library's lazy imports go through the helper: a missing highdicom names the dicom-out extra."""
    import sys

    from mammolens.io import dicom_out

    monkeypatch.setitem(sys.modules, "highdicom", None)  # import of a None entry raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[dicom-out\]"'):
        dicom_out._highdicom()
