"""Report text: sections, sentences, the breast each sentence is about, and report text from annotations.

Free-text mammography reports (manifest column ``report``) are split into sections (FINDINGS,
IMPRESSION, HISTORY; anything else is "other"), the sections into sentences, and every sentence is
assigned to a breast when it names one ("left", "right", "bilateral", "both breasts", view codes such as
"LCC"/"RMLO", or a clock position together with an inner/outer quadrant), else to the exam.

Public datasets have no free-text reports, so :func:`annotation_report` writes *structured* report text
from their expert annotations (the adapters of :mod:`mammolens.data.adapters` call it; the manifest says
``report_source = "annotations"``): deterministic, with several phrasings per fact chosen by a seed.

Privacy: report text is patient data. This module never logs it and its errors never quote it; the
evaluation outputs drop the column (``data.manifest.REPORT_TEXT_COLUMNS``).

Sentence splitting is a tested rule set rather than pysbd: pysbd 0.3.4 splits after "approx." and
"cm." before a number ("approx. | 1.2 cm. | in the right breast"), which is common in these reports.
No torch here.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

SECTIONS = ("findings", "impression", "history", "other")
SIDES = ("L", "R", "B", "")

# header words (lower case, singular) -> section; matched only as a header: at the start of a line or
# after a sentence end, followed by ':' or a dash, or alone on its line
_HEADERS = {
    "findings": "findings", "finding": "findings", "report": "findings", "description": "findings",
    "mammogram": "findings", "bilateral mammogram": "findings", "screening mammogram": "findings",
    "impression": "impression", "conclusion": "impression", "assessment": "impression",
    "summary": "impression", "opinion": "impression", "overall assessment": "impression",
    "final assessment": "impression", "diagnosis": "impression",
    "clinical history": "history", "history": "history", "indication": "history",
    "clinical indication": "history", "clinical information": "history", "clinical details": "history",
    "clinical data": "history", "reason for exam": "history", "reason for examination": "history",
    "reason for study": "history", "clinical notes": "history",
    "comparison": "other", "technique": "other", "recommendation": "other", "procedure": "other",
    "exam": "other", "examination": "other", "addendum": "other",
}
_HEADER_WORDS = "|".join(re.escape(h).replace(r"\ ", r"\s+") for h in sorted(_HEADERS, key=len, reverse=True))
_HEADER = re.compile(
    rf"(?:^|(?<=[.!?])[ \t]+)[ \t]*(?:[-*\u2022][ \t]*)?(?P<h>{_HEADER_WORDS})(?:s|es)?[ \t]*(?::|[-\u2013\u2014](?=\s)|$)",
    re.IGNORECASE | re.MULTILINE,
)

# a period after one of these does not end a sentence (lower case, without the final period)
ABBREVIATIONS = frozenset({
    "approx", "appr", "ca", "cm", "mm", "dr", "drs", "mr", "mrs", "ms", "prof", "vs", "v", "e.g", "i.e", "etc",
    "cf", "incl", "mos", "mo", "yrs", "yr", "wk", "wks", "no", "nos", "fig", "st", "pt", "pts", "hx", "dx",
    "sx", "max", "min", "approximately", "obl", "lat", "med", "ant", "post", "sup", "inf", "prev", "resp",
    "al", "ref", "vol", "dept", "bilat", "o'clock", "r/o", "s/p", "w/o", "a.m", "p.m",
})
_SENT_END = re.compile(r"[.!?]+[\"')\]]*[ \t]+(?=[\"'(\[]?[A-Z0-9])")
_LIST_MARK = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*\u2022])\s+")

_SIDE_WORDS = {
    "B": re.compile(r"\b(?:bilateral(?:ly)?|both\s+breasts?|both\s+sides|either\s+breast|each\s+breast|"
                    r"breasts\s+bilaterally)\b", re.IGNORECASE),
    "R": re.compile(r"\b(?:right|rt\.?(?=\s)|R(?:CC|MLO|ML|LM|XCCL|XCCM)|R\s+(?:breast|CC|MLO))\b",
                    re.IGNORECASE),
    "L": re.compile(r"\b(?:left|lt\.?(?=\s)|L(?:CC|MLO|ML|LM|XCCL|XCCM)|L\s+(?:breast|CC|MLO))\b",
                    re.IGNORECASE),
}
_CLOCK = re.compile(r"\b(1[0-2]|[1-9])(?::(?:00|30))?\s*(?:o'?\s*clock|o\u2019clock|:00\b)", re.IGNORECASE)
_SIDE_LABEL = re.compile(r"^\s*(?:(right|left)(?:\s+breast)?|(bilateral|both\s+breasts))\s*[:\-\u2013]\s*",
                         re.IGNORECASE)


@dataclass(frozen=True)
class Sentence:
    """One sentence of a report.

    Attributes:
        text: the sentence, stripped (list markers such as "1." removed).
        section: "findings", "impression", "history" or "other".
        side: "L", "R", "B" (both breasts) or "" (about the exam, no side named).
    """

    text: str
    section: str
    side: str


def split_sections(text: str) -> dict[str, str]:
    """Split a report into its sections, tolerant of real-world header variants.

    Headers are recognised at the start of a line or after a sentence end, in any case, followed by a
    colon, a dash or the end of the line ("FINDINGS:", "Findings -", "impression", "CLINICAL HISTORY:",
    "Indication:", "Conclusion:"). Text before the first header is "other"; a report without any header
    is all "findings", and so is the text before the first header when no header names the findings
    (reports often start with the findings and end with "IMPRESSION:"). Several headers of one section
    are joined in order.

    Returns:
        ``{section: text}`` for the sections present, keys from ``SECTIONS``.
    """
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    hits = list(_HEADER.finditer(text))
    if not hits:
        body = text.strip()
        return {"findings": body} if body else {}
    parts: dict[str, list[str]] = {}
    names = [_HEADERS[re.sub(r"\s+", " ", m.group("h").lower())] for m in hits]
    pre = text[: hits[0].start()].strip()
    if pre:
        parts.setdefault("other" if "findings" in names else "findings", []).append(pre)
    for k, (m, name) in enumerate(zip(hits, names)):
        end = hits[k + 1].start() if k + 1 < len(hits) else len(text)
        body = text[m.end():end].strip()
        if body:
            parts.setdefault(name, []).append(body)
    return {s: "\n".join(parts[s]) for s in SECTIONS if s in parts}


def _is_abbreviation(chunk: str) -> bool:
    """Whether ``chunk`` (text up to a sentence-end candidate) ends with an abbreviation or a list marker."""
    m = re.search(r"(\S+?)[.!?]+[\"')\]]*$", chunk)
    if not m:
        return False
    word = m.group(1).lower().lstrip("([\"'")
    if word in ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)+[a-z]", word):  # e.g, i.e, u.s.a
        return True
    # "1." starting a line is a list marker, not a sentence: the number stands alone
    line = chunk[chunk.rfind("\n") + 1:].strip()
    return bool(re.fullmatch(r"\d{1,2}[.)]", line))


def _sentences(block: str) -> list[str]:
    """Split one section's text into sentences (rules: see the module docstring and ``ABBREVIATIONS``)."""
    out: list[str] = []
    # a line break ends a sentence unless the next line continues it (starts lower case: wrapped text)
    lines = re.split(r"\n(?![ \t]*[a-z])", block)
    for line in lines:
        line = " ".join(line.split())
        start = 0
        for m in _SENT_END.finditer(line):
            if _is_abbreviation(line[start:m.start() + len(m.group().rstrip())]):
                continue
            out.append(line[start:m.end()])
            start = m.end()
        out.append(line[start:])
    cleaned = [_LIST_MARK.sub("", s).strip() for s in out]
    return [s for s in cleaned if s and not re.fullmatch(r"[\W_]+", s)]


def sentence_side(sentence: str) -> str:
    """The breast a sentence is about: "L", "R", "B" (both) or "" (none named).

    Both sides named (e.g. "right larger than left") gives "B". A clock position with an inner or outer
    quadrant names the side: outer is 7-11 o'clock on the right breast and 1-5 o'clock on the left
    (viewed facing the patient), so "upper outer quadrant at 10 o'clock" is the right breast.
    """
    if _SIDE_WORDS["B"].search(sentence):
        return "B"
    right, left = bool(_SIDE_WORDS["R"].search(sentence)), bool(_SIDE_WORDS["L"].search(sentence))
    if right and left:
        return "B"
    if right or left:
        return "R" if right else "L"
    clock = _CLOCK.search(sentence)
    quadrant = re.search(r"\b(outer|inner|lateral|medial)\b", sentence, re.IGNORECASE)
    if clock and quadrant:
        hour = int(clock.group(1))
        outer = quadrant.group(1).lower() in ("outer", "lateral")
        if 7 <= hour <= 11:
            return "R" if outer else "L"
        if 1 <= hour <= 5:
            return "L" if outer else "R"
    return ""


def split_sentences(text: str) -> list[Sentence]:
    """Sections, then sentences, each with its side (see :func:`sentence_side`).

    A sentence starting with a side label ("Right breast: ...", "LEFT - ...") sets the side of the
    following sentences of that section that name none, until the next side label.
    """
    out: list[Sentence] = []
    for section, block in split_sections(text).items():
        context = ""
        for s in _sentences(block):
            label = _SIDE_LABEL.match(s)
            if label:
                context = "B" if label.group(2) else label.group(1)[0].upper()
                body = s[label.end():].strip()
                if not body:
                    continue  # a bare "RIGHT BREAST:" line only sets the context
                s = body
            side = sentence_side(s) or context
            out.append(Sentence(s, section, side))
    return out


def sentences_for_breast(text: str, laterality: str) -> list[str]:
    """Sentences about one breast: that side's, the bilateral ones and the exam-level ones.

    Args:
        text: a report.
        laterality: "L" or "R" (also "left"/"right").

    Raises:
        ValueError: laterality is not left or right.
    """
    lat = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}.get(str(laterality).strip().upper())
    if lat is None:
        raise ValueError(f"laterality must be 'L' or 'R' (or 'left'/'right'), got {laterality!r}; "
                         f"pass the image's laterality column")
    return [s.text for s in split_sentences(text) if s.side in (lat, "B", "")]


# -------------------------------------------------------------------------------- annotation reports
def stable_seed(key: str) -> int:
    """A seed from a string that is the same in every process (``hash()`` is salted per process)."""
    return zlib.crc32(str(key).encode("utf-8"))


_SIDE_NAME = {"L": "left", "R": "right", "B": "both"}

_DENSITY = {
    "A": ("the breasts are almost entirely fatty", "almost entirely fatty breast tissue"),
    "B": ("there are scattered areas of fibroglandular density", "scattered fibroglandular densities"),
    "C": ("the breasts are heterogeneously dense, which may obscure small masses", "heterogeneously dense breast tissue"),
    "D": ("the breasts are extremely dense, which lowers the sensitivity of mammography",
          "extremely dense breast tissue"),
}
_DENSITY_SENT = ("Breast composition: {long} (ACR {c}).", "{Long} (BI-RADS density {c}).",
                 "The breast density is category {c}: {short}.")

# MIAS background tissue in composition words; F/G/D is not an ACR a-d category, so no letter is given
_TISSUE = {"F": ("the breast is predominantly fatty", "predominantly fatty breast tissue"),
           "G": ("the breast shows fatty and fibroglandular tissue", "mixed fatty and fibroglandular tissue"),
           "D": ("the breast is dense, mostly fibroglandular tissue", "dense fibroglandular tissue")}
_TISSUE_SENT = ("Breast composition: {long}.", "{Long}.", "The composition shows {short}.")

# abnormality codes (MIAS classes, CBIS-DDSM/VinDr names) -> noun phrases
_ABNORMALITY = {
    "CALC": "calcifications", "CALCIFICATION": "calcifications", "SUSPICIOUS CALCIFICATION": "suspicious calcifications",
    "CIRC": "a circumscribed mass", "SPIC": "a mass with spiculated margins", "MISC": "a mass with indistinct margins",
    "ARCH": "an architectural distortion", "ARCHITECTURAL DISTORTION": "an architectural distortion",
    "ASYM": "an asymmetry", "ASYMMETRY": "an asymmetry", "FOCAL ASYMMETRY": "a focal asymmetry",
    "GLOBAL ASYMMETRY": "a global asymmetry", "MASS": "a mass", "SKIN THICKENING": "skin thickening",
    "SKIN RETRACTION": "skin retraction", "NIPPLE RETRACTION": "nipple retraction",
    "SUSPICIOUS LYMPH NODE": "a suspicious lymph node",
}
_NORMAL = {"NORM", "NORMAL", "NO FINDING", "NONE", ""}
_FINDING_SENT = ("In the {side} breast there {be} {what}{where}.", "{What} {be} seen in the {side} breast{where}.",
                 "The {side} breast shows {what}{where}.", "There {be} {what} in the {side} breast{where}.")
_NORMAL_SENT = ("No mass, suspicious calcification or architectural distortion is seen{in_side}.",
                "No abnormality is identified{in_side}.", "There is no mammographic evidence of malignancy{in_side}.")
_BIRADS_MEANING = {"0": "incomplete, additional imaging needed", "1": "negative", "2": "benign",
                   "3": "probably benign", "4": "suspicious", "5": "highly suggestive of malignancy",
                   "6": "known biopsy-proven malignancy"}
_BIRADS_SENT = ("BI-RADS {b}: {meaning}.", "Assessment: BI-RADS category {b} ({meaning}).",
                "Overall BI-RADS assessment {b}, {meaning}.")


def _words(value: object) -> str:
    """A coded value as words: 'FINE_LINEAR_BRANCHING' -> 'fine linear branching', 'A-B' -> 'a and b'."""
    parts = [p.replace("_", " ").strip().lower() for p in re.split(r"-(?=[A-Za-z])", str(value)) if p.strip()]
    return " and ".join(p for p in parts if p and p not in ("n/a", "nan", "none"))


_MLO_LEVEL = {"upper": (" in the superior breast on the MLO view", ", superiorly on the MLO view"),
              "middle": (" at the level of the nipple on the MLO view", ", at nipple level on the MLO view"),
              "lower": (" in the inferior breast on the MLO view", ", inferiorly on the MLO view")}


def _where(facts: dict, pick) -> str:
    clock, quadrant, region = facts.get("clock"), facts.get("quadrant"), facts.get("region")
    level = str(facts.get("mlo_level") or "")
    if clock not in (None, "") and quadrant:
        return pick((" at {c} o'clock in the {q} quadrant", " in the {q} quadrant ({c} o'clock)")).format(
            c=int(clock), q=quadrant)
    if clock not in (None, ""):
        return pick((" at {c} o'clock", " at the {c} o'clock position")).format(c=int(clock))
    if quadrant:
        return pick((" in the {q} quadrant", ", {q} quadrant")).format(q=quadrant)
    if level in _MLO_LEVEL:
        return pick(_MLO_LEVEL[level])
    if region:
        return pick((" in the {r} part of the breast", ", {r} region")).format(r=region)
    return ""


def annotation_report(facts: dict, seed: int) -> str:
    """Structured report text from dataset annotations; deterministic given ``facts`` and ``seed``.

    Args:
        facts: any of ``density`` (A-D), ``tissue`` (MIAS F/G/D), ``laterality`` (L/R/B: the breast the
            facts are about), ``abnormality`` (MIAS class CALC/CIRC/SPIC/MISC/ARCH/ASYM/NORM, "mass",
            "calcification", VinDr finding categories; several joined by "+" or given as a list),
            ``clock`` (1-12), ``quadrant`` (e.g. "upper outer"), ``mlo_level`` (upper/middle/lower third
            of an MLO view: superior / nipple level / inferior), ``region`` (free words),
            ``birads`` ("0"-"6", "4a"...), ``mass_shape``,
            ``mass_margins``, ``calc_type``, ``calc_distribution`` (CBIS-DDSM codes such as
            "FINE_LINEAR_BRANCHING"). Missing or empty facts are left out.
        seed: chooses among several phrasings of every fact (use :func:`stable_seed` of a report id).

    A pathology result (``pathology`` / ``severity``) is never written: it is a biopsy outcome, not a
    mammographic finding, and stays a label column (text that states the label would let report training
    read the answer).

    Returns:
        "FINDINGS: ... IMPRESSION: ..." text; "" when no fact is given.
    """
    rng = random.Random(seed)
    pick = rng.choice
    side = str(facts.get("laterality") or "").upper()[:1]
    findings: list[str] = []
    impression: list[str] = []
    density = str(facts.get("density") or "").upper()
    if density in _DENSITY:
        long, short = _DENSITY[density]
        findings.append(pick(_DENSITY_SENT).format(long=long, Long=long[0].upper() + long[1:], short=short, c=density))
    tissue = str(facts.get("tissue") or "").upper()
    if tissue in _TISSUE:
        long, short = _TISSUE[tissue]
        findings.append(pick(_TISSUE_SENT).format(long=long, Long=long[0].upper() + long[1:], short=short))
    abn = facts.get("abnormality")
    codes = [str(a).strip().upper() for a in (abn if isinstance(abn, (list, tuple)) else str(abn or "").split("+"))]
    lesions = [c for c in dict.fromkeys(codes) if c not in _NORMAL]
    side_word = _SIDE_NAME.get(side, "")
    if abn is not None and not lesions:
        findings.append(pick(_NORMAL_SENT).format(in_side=f" in the {side_word} breast" if side in "LR" and side else ""))
    for code in lesions:
        what = _ABNORMALITY.get(code, _words(code))
        be = "are" if what.endswith("calcifications") else "is"
        what = _describe(what, facts, pick)
        where = _where(facts, pick)
        tpl = pick(_FINDING_SENT) if side in ("L", "R") else "There {be} {what}{where}."
        findings.append(tpl.format(side=side_word, Side=side_word.capitalize(), what=what, be=be,
                                   What=what[0].upper() + what[1:], where=where))
    birads = str(facts.get("birads") or "").strip().upper().removeprefix("BI-RADS").strip().lower()
    if birads[:1] in _BIRADS_MEANING:
        impression.append(pick(_BIRADS_SENT).format(b=birads, meaning=_BIRADS_MEANING[birads[:1]]))
    text = ""
    if findings:
        text = pick(("FINDINGS: ", "Findings: ", "FINDINGS:\n")) + " ".join(findings)
    if impression:
        text += ("\n" if text else "") + pick(("IMPRESSION: ", "Impression: ", "IMPRESSION:\n")) + " ".join(impression)
    return text


def _describe(what: str, facts: dict, pick) -> str:
    """Add CBIS-DDSM shape/margins to a mass and type/distribution to calcifications."""
    if "mass" in what:
        shape, margins = _words(facts.get("mass_shape") or ""), _words(facts.get("mass_margins") or "")
        if shape:
            what = pick(("{a} {s} mass", "a mass of {s} shape")).format(a="an" if shape[0] in "aeiou" else "a", s=shape)
        if margins:
            what += pick((" with {m} margins", " whose margins are {m}")).format(m=margins)
    elif "calcification" in what:
        kind, dist = _words(facts.get("calc_type") or ""), _words(facts.get("calc_distribution") or "")
        if kind:
            what = f"{kind} calcifications"
        if dist:
            what += pick((" in a {d} distribution", " with {d} distribution")).format(d=dist)
    return what


def clock_face(laterality: str, upper: bool, outer: bool) -> tuple[int, str]:
    """The clock position at the middle of a quadrant, viewed facing the patient.

    Returns:
        ``(hour, "upper outer" | "upper inner" | "lower outer" | "lower inner")``.
    """
    quadrant = f"{'upper' if upper else 'lower'} {'outer' if outer else 'inner'}"
    # right breast: outer is the patient's right = the viewer's left (7-11 o'clock)
    right = {"upper outer": 10, "upper inner": 2, "lower inner": 4, "lower outer": 8}
    hour = right[quadrant] if laterality == "R" else (12 - right[quadrant]) % 12 or 12
    return hour, quadrant


__all__ = ["ABBREVIATIONS", "SECTIONS", "SIDES", "Sentence", "annotation_report", "clock_face", "sentence_side",
           "sentences_for_breast", "split_sections", "split_sentences", "stable_seed"]
