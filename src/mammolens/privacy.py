"""Keyed pseudonyms and path scrubbing: no patient identity in mammolens' own tables and reports.

A pseudonym is ``<kind>-<16 hex>``: the first 64 bits of HMAC-SHA256(secret key, ``kind:value``). Without
the key an alias cannot be reversed by hashing guessed IDs (an unsalted hash of a short PatientID can); with
the same key the same ID always gets the same alias, so rows of one patient or study still group, across
runs and across ``evaluate`` and ``predict``.

The key (first found wins):

1. ``MAMMOLENS_SECRET``: the key itself (e.g. from a secrets manager);
2. ``MAMMOLENS_SECRET_FILE``: a key file, e.g. one per project; created if absent;
3. ``$XDG_CONFIG_HOME/mammolens/secret`` (default ``~/.config/mammolens/secret``): one per installation,
   created on first use with mode 0600.

Losing the key breaks linkage with earlier outputs (new aliases); never commit or share it.
This module is low level (no torch) and is used by ``inference`` and ``workflows``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

ALIAS_HEX = 16  # 64 bits: no collisions in any archive, and nothing to brute-force without the key
_KEYS: dict[tuple[str, str], bytes] = {}

# identifier columns of a manifest / keys of ``MammoImage.meta`` -> the kind of their pseudonym
ID_COLUMNS = {"patient_id": "patient", "patient_name": "name", "accession_number": "accession",
              "study_id": "study", "study_instance_uid": "study", "series_instance_uid": "series",
              "sop_instance_uid": "sop", "report_id": "report"}


def key_path() -> Path:
    """Where the key file is (``MAMMOLENS_SECRET_FILE``, else the per-installation file)."""
    env = os.environ.get("MAMMOLENS_SECRET_FILE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mammolens" / "secret"


def secret_key() -> bytes:
    """The pseudonymisation key (see the module docstring); the key file is created once, mode 0600."""
    env = os.environ.get("MAMMOLENS_SECRET", "")
    path = key_path()
    cache_key = (env, str(path))
    if cache_key in _KEYS:
        return _KEYS[cache_key]
    if env:
        key = env.encode()
    else:
        key = _read_or_create(path)
    _KEYS[cache_key] = key
    return key


def _read_or_create(path: Path) -> bytes:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:  # O_EXCL: two processes starting at once must not write two different keys
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            log.info("created the pseudonymisation key %s (keep it; never commit it)", path)
    if path.stat().st_mode & 0o077:
        log.warning("pseudonymisation key %s is readable by other users; chmod 600 it", path)
    key = path.read_text().strip().encode()
    if not key:
        raise ValueError(f"pseudonymisation key file {path} is empty; delete it to create a new key "
                         "(aliases will change) or restore the old one")
    return key


def pseudonym(value: object, kind: str = "study", key: bytes | None = None) -> str:
    """``<kind>-<16 hex>``: a keyed alias of ``value`` (stable for one key; differs across kinds).

    Args:
        value: the identifier (PatientID, a UID, a folder name...).
        kind: what it is (``patient``, ``study``, ``series``, ``sop``...); part of the alias and the hash.
        key: the secret; default :func:`secret_key`.
    """
    # surrogateescape: a path holding non-UTF-8 bytes (a Latin-1 file name) still gets its alias
    mac = hmac.new(key if key is not None else secret_key(), f"{kind}:{value}".encode("utf-8", "surrogateescape"),
                   hashlib.sha256)
    return f"{kind}-{mac.hexdigest()[:ALIAS_HEX]}"


def relative_path(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """``path`` relative to ``root`` (POSIX); only the file name when there is no root or it is outside."""
    if not root:
        return Path(path).name
    try:
        return _resolved(path).relative_to(_resolved(root)).as_posix()
    except ValueError:
        return Path(path).name


def _resolved(path: str | os.PathLike) -> Path:
    """``Path(path).resolve()``, or for a path inside a symlink loop (``resolve`` raises) its parent resolved
    plus its own name: a hostile file name never stops the job that reports it."""
    p = Path(path)
    try:
        return p.resolve()
    except (RuntimeError, OSError):
        try:
            return p.parent.resolve() / p.name
        except (RuntimeError, OSError):
            return Path(os.path.abspath(p))


Ids = Mapping[str, object] | Iterable[tuple[str, object]]


def ids_of(record: Mapping[str, object]) -> list[tuple[str, object]]:
    """``(kind, value)`` of the identifiers in a manifest row or an image's ``meta`` (see ``ID_COLUMNS``)."""
    return [(kind, record[col]) for col, kind in ID_COLUMNS.items() if record.get(col) not in (None, "")]


def _pairs(ids: Ids) -> list[tuple[str, str]]:
    """``(value, kind)`` pairs, longest value first (a series UID may extend its study UID)."""
    items = ids.items() if isinstance(ids, Mapping) else ids
    pairs = {(str(v).strip(), k) for k, v in items if v is not None and v == v and str(v).strip()}  # v == v: no NaN
    return sorted(pairs, key=lambda t: (-len(t[0]), t))


def _replace(text: str, pairs: list[tuple[str, str]], whole: bool) -> str:
    for value, kind in pairs:
        if (whole and text == value) or (len(value) >= 4 and value in text):
            text = text.replace(value, pseudonym(value, kind))
    return text


def scrub_path(path: str | os.PathLike, ids: Ids, root: str | os.PathLike | None = None) -> str:
    """A path without identifiers: relative to ``root`` (see :func:`relative_path`) when given, and every
    component that holds one of ``ids`` (``{kind: value}`` or ``(kind, value)`` pairs, e.g.
    ``{"patient": "12345"}``) pseudonymised.

    Archives are foldered by PatientID and StudyInstanceUID and files are often named by SOPInstanceUID;
    IDs shorter than 4 characters are replaced only where they are a whole component (``"7"`` must not
    rewrite ``L_CC_7.dcm``).
    """
    text = relative_path(path, root) if root is not None else Path(path).as_posix()
    pairs = _pairs(ids)
    names = name_tokens(ids)
    # names first: a pseudonym written for an ID (``patient-…``) must not be read as a name word
    return "/".join(_replace(_scrub_name(part, names), pairs, whole=True) for part in text.split("/"))


def scrub_text(text: str, ids: Ids) -> str:
    """``text`` (e.g. an error message) with every identifier of 4+ characters in ``ids`` pseudonymised, and
    every word-run that spells a patient name (:func:`name_tokens`) replaced by its pseudonym."""
    names = name_tokens(ids)
    if names:  # names first: a pseudonym written for an ID (``patient-…``) must not be read as a name word
        text = " ".join("/".join(_scrub_name(c, names) for c in w.split("/")) for w in text.split(" "))
    return _replace(text, _pairs(ids), whole=False)


# words of a path that are not names even when a patient is called so (views, sides, file kinds)
_NOT_NAMES = frozenset({"dcm", "dicom", "dic", "png", "tif", "tiff", "jpg", "jpeg", "left", "right", "mlo", "cc",
                        "study", "series", "image", "images", "mammo", "breast", "the", "and", "for"})


def _words(text: str) -> list[str]:
    import re

    return [w for w in re.split(r"[^0-9a-z]+", text.lower()) if w]


def name_tokens(ids: Ids) -> set[str]:
    """The words of the patient names in ``ids`` (kind ``name``): a DICOM PersonName ``FAMILY^GIVEN^MIDDLE``
    split at ``^``, spaces and punctuation, lower case; words shorter than 3 characters, numbers and words
    that name views, sides or file kinds (``_NOT_NAMES``) are left out (they would rewrite ``L_CC.dcm``)."""
    items = ids.items() if isinstance(ids, Mapping) else ids
    out: set[str] = set()
    for kind, value in items:
        if kind == "name" and value is not None and value == value:  # noqa: PLR0124 — not NaN
            out.update(w for w in _words(str(value)) if len(w) >= 3 and not w.isdigit() and w not in _NOT_NAMES)
    return out


def _scrub_name(part: str, names: set[str]) -> str:
    """A path component (or word) holding any word of a patient's name, in any case, order or separator
    (``ZZNAME^ALICE``, ``zzname alice``, ``Alice.Zzname_2.dcm``), replaced by a keyed pseudonym of itself;
    the file suffix is kept. Components without a name word are returned unchanged."""
    if not names or not names.intersection(_words(part)):
        return part
    stem, dot, suffix = part.rpartition(".")
    if not dot or not suffix.isalnum() or len(suffix) > 5 or not stem:
        stem, suffix = part, ""
    return pseudonym(" ".join(_words(stem)), "name") + (f".{suffix}" if suffix else "")


def pseudonymise_frame(df):
    """A copy of a DataFrame with identifier columns (``ID_COLUMNS``) replaced by keyed pseudonyms (grouping
    still works) and the path columns ``image_path`` and ``lesion_mask`` made relative to their files' common
    folder with identifier components pseudonymised (:func:`scrub_path`)."""
    out = df.copy()
    for col in ("image_path", "lesion_mask"):  # file paths (a mask folder names its patient like the image's)
        if col not in out or not len(out):
            continue
        given = [p for p in out[col] if isinstance(p, str) and p]
        if not given:
            continue
        root = os.path.commonpath([str(_resolved(p).parent) for p in given])
        out[col] = [scrub_path(r[col], ids_of(r), root) if isinstance(r[col], str) and r[col] else r[col]
                    for r in df.to_dict("records")]
    for col, kind in ID_COLUMNS.items():
        if col in out:
            out[col] = [pseudonym(v, kind) for v in out[col]]
    return out


def known_identifiers(id_lists: Iterable[Ids]) -> dict[str, str]:
    """``{value: kind}`` of every identifier in ``id_lists`` (e.g. every header a job read), for
    :func:`scrub_report`'s whole-component matching; values shorter than 4 characters are left out."""
    known: dict[str, str] = {}
    for ids in id_lists:
        for value, kind in _pairs(ids):
            if len(value) >= 4:
                known.setdefault(value, kind)
    return known


def scrub_report(path: str | os.PathLike, reason: str, ids: Ids = (), root: str | os.PathLike | None = None,
                 known: Mapping[str, str] | None = None) -> tuple[str, str]:
    """An error row's ``(file, reason)`` without identity, for ``ingest``/``preprocess`` tables and terminals.

    ``file`` is ``path`` relative to ``root`` (the name alone when outside it) with every component that holds
    one of ``ids`` (the file's own identifiers, :func:`scrub_path`) or equals one of ``known`` (every
    identifier the job saw, :func:`known_identifiers`: an unreadable file in a PatientID folder) pseudonymised.
    ``reason`` has ``ids`` scrubbed and the path, as given or absolute, replaced by ``file``. Both are
    printable UTF-8 (``io.paths.display_path``).
    """
    from mammolens.io.paths import display_path

    text = scrub_path(path, ids, root) if root is not None else scrub_path(Path(path).name, ids)
    if known:
        text = "/".join(pseudonym(part, known[part]) if part in known else part for part in text.split("/"))
    reason = str(reason)
    for form in sorted({str(path), str(_resolved(path)), os.path.abspath(path)}, key=len, reverse=True):
        reason = reason.replace(form, text)
    reason = scrub_text(reason, ids)
    if known:
        reason = " ".join(pseudonym(w, known[w]) if w in known else w for w in reason.split(" "))
    return display_path(text), display_path(reason)


def scrub_errors(frame, rows: Iterable, path_col: str = "image_path",
                 reason_col: str = "error") -> tuple[list[str], list[str]]:
    """``(paths, reasons)`` of the error rows ``rows`` (index labels) of a manifest-like DataFrame, without
    identity (:func:`scrub_report`): paths relative to the images' common folder, identifiers of the row and
    any identifier of the table found as a whole path component pseudonymised."""
    rows = list(rows)
    if not rows:
        return [], []
    records = frame.to_dict("index")
    known = known_identifiers(ids_of(r) for r in records.values())
    paths = [str(p) for p in frame[path_col]] if len(frame) else []
    try:
        root = os.path.commonpath([str(_resolved(p).parent) for p in paths]) if paths else None
    except ValueError:  # relative and absolute mixed, or different drives
        root = None
    out_paths, out_reasons = [], []
    for i in rows:
        r = records[i]
        p, reason = scrub_report(str(r[path_col]), str(r.get(reason_col) or ""), ids_of(r), root, known)
        out_paths.append(p)
        out_reasons.append(reason)
    return out_paths, out_reasons


def display_path(path: str | bytes | os.PathLike) -> str:
    """A path (or text holding one) as printable UTF-8, undecodable bytes as ``\\xNN`` (``caf\\xe9.dcm``):
    ``io.paths.display_path``, the one implementation, under the name the output code imports."""
    from mammolens.io.paths import display_path as _display

    return _display(path)
