"""Tests for mammolens.privacy: keyed pseudonyms, the key file, path scrubbing."""

import hashlib
import stat

import pytest

from mammolens.privacy import ids_of, pseudonym, scrub_path, scrub_text, secret_key


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "cfg" / "mammolens" / "secret"
    monkeypatch.delenv("MAMMOLENS_SECRET", raising=False)
    monkeypatch.setenv("MAMMOLENS_SECRET_FILE", str(path))
    return path


def test_pseudonym_is_keyed_not_an_unsalted_hash():
    alias = pseudonym("1234", "patient", key=b"k1")
    digest = hashlib.sha1(b"1234").hexdigest()
    assert alias.startswith("patient-") and len(alias) == len("patient-") + 16
    assert digest[:8] not in alias and digest[:10] not in alias and digest[:12] not in alias
    assert alias == pseudonym("1234", "patient", key=b"k1")  # stable with the same key
    assert alias != pseudonym("1234", "patient", key=b"k2")  # another key, another alias
    assert pseudonym("1234", "study", key=b"k1") != "study-" + alias.split("-")[1]  # kinds differ


def test_secret_key_file_created_once_with_mode_0600(key_file):
    assert not key_file.exists()
    key = secret_key()
    assert key_file.is_file() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key) == 64 and key_file.read_text().strip().encode() == key
    assert secret_key() == key and pseudonym("SYN0001", "patient") == pseudonym("SYN0001", "patient", key=key)


def test_secret_key_per_project_file_and_env(tmp_path, key_file, monkeypatch):
    a = pseudonym("SYN0001", "patient")
    monkeypatch.setenv("MAMMOLENS_SECRET_FILE", str(tmp_path / "project.key"))
    b = pseudonym("SYN0001", "patient")
    assert a != b and (tmp_path / "project.key").is_file()
    monkeypatch.setenv("MAMMOLENS_SECRET", "from-a-vault")
    assert pseudonym("SYN0001", "patient") == pseudonym("SYN0001", "patient", key=b"from-a-vault")


def test_secret_key_empty_file_is_an_error(key_file):
    key_file.parent.mkdir(parents=True)
    key_file.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        secret_key()


def test_scrub_path_pseudonymises_id_components(key_file):
    pid, study, sop = "PAT123", "1.2.840.1.5", "1.2.840.1.5.7.9"
    ids = {"patient": pid, "study": study, "sop": sop}
    out = scrub_path(f"/archive/{pid}/{study}/{sop}.dcm", ids, root="/archive")
    assert out == f"{pseudonym(pid, 'patient')}/{pseudonym(study, 'study')}/{pseudonym(sop, 'sop')}.dcm"
    assert scrub_path("/elsewhere/x.dcm", ids, root="/archive") == "x.dcm"  # outside the root: the name only
    # a short ID only as a whole component; longer ones also inside names
    assert scrub_path("7/L_CC_7.dcm", {"patient": "7"}) == f"{pseudonym('7', 'patient')}/L_CC_7.dcm"
    assert scrub_path(f"{pid}/{pid}_LCC.dcm", ids) == f"{pseudonym(pid, 'patient')}/{pseudonym(pid, 'patient')}_LCC.dcm"
    assert scrub_path("x/a.dcm", {}) == "x/a.dcm"


def test_scrub_text_and_ids_of(key_file):
    ids = ids_of({"patient_id": "PAT123", "study_instance_uid": "1.2.3.4", "laterality": "L", "sop_instance_uid": ""})
    assert sorted(ids) == [("patient", "PAT123"), ("study", "1.2.3.4")]
    text = scrub_text("PAT123/1.2.3.4/x.dcm: truncated pixel data", ids)
    assert "PAT123" not in text and "1.2.3.4" not in text and text.endswith(": truncated pixel data")
