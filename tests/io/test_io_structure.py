"""Issue 18 item 4/5 for io: no import circle between the reader modules, no function that needs a scroll
bar in the DICOM reader, and ingest uses only the reader's public API."""

import ast
from pathlib import Path

IO = Path(__file__).resolve().parents[2] / "src" / "mammolens" / "io"
INGEST = IO.parent / "data" / "ingest.py"


def _imports(path: Path) -> set[str]:
    """Modules a file imports (at any depth: lazy imports inside functions count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_reader_modules_import_no_circle():
    graph = {p.stem: {m.rsplit(".", 1)[-1] for m in _imports(p) if m.startswith("mammolens.io.")}
             for p in IO.glob("*.py") if p.stem != "__init__"}

    def reaches(a: str, b: str, seen=()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, (*seen, n))) for n in graph.get(a, ()))

    circles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and reaches(b, a))
    assert circles == [], circles
    assert "dicom" not in graph["gating"] and graph["header"] <= {"_types", "paths"}


def test_dicom_reader_functions_fit_on_a_screen():
    tree = ast.parse((IO / "dicom.py").read_text())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 80}
    assert long == {}, long


def test_ingest_uses_only_the_public_reader():
    text = INGEST.read_text()
    assert "read_dicom_meta" not in text and "_check_image" not in text and "._dict" not in text
