"""The web app with the REAL Predictor of a tiny trained run (not a fake)."""

import base64
import io

import pytest
from PIL import Image

from _app_fixtures import app_env  # noqa: F401 — session fixture

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def client(app_env):  # noqa: F811
    from fastapi.testclient import TestClient

    from mammolens.inference import Predictor
    from mammolens.serve.app import create_app

    app = create_app(Predictor.from_run(app_env.run, device="cpu", workers=0))
    return TestClient(app, base_url="http://127.0.0.1:8000")  # a local Host (see SecurityMiddleware)


def test_real_predictor_two_dicoms_of_one_study(client, app_env):  # noqa: F811
    f1, f2 = app_env.study_files(0)[:2]  # DM_LCC, DM_LMLO
    files = [("files", (f.name, f.read_bytes(), "application/dicom")) for f in (f1, f2)]
    r = client.post("/api/predict", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["file"] for i in body["images"]] == [f1.name, f2.name]
    assert len(body["exams"]) == 1 and body["exams"][0]["pred"] in {"A", "B", "C", "D"}
    assert sum(body["exams"][0]["probs"].values()) == pytest.approx(1.0, abs=1e-4)
    assert [b["laterality"] for b in body["breasts"]] == ["L"]
    assert body["errors"] == []
    from mammolens.io import read_image

    for img, f in zip(body["images"], (f1, f2)):
        assert img["laterality"] == "L" and img["view"] in {"CC", "MLO"} and img["modality"] == "DM"
        assert img["overlay"].startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(img["overlay"].split(",", 1)[1])))
        h0, w0 = read_image(f).pixels.shape  # the original image plus the colour-bar panel on its right
        assert png.height == h0 and png.width > w0 and img["gradcam_class"] == img["pred"]
    # no identifiers in the response
    uid = app_env.df["study_id"].iloc[0]
    assert "SYN" not in r.text and uid not in r.text


def test_real_predictor_bad_upload_listed(client, app_env):  # noqa: F811
    good = app_env.study_files(0)[0]
    files = [("files", (good.name, good.read_bytes(), "application/dicom")),
             ("files", ("x.dcm", b"garbage" * 40, "application/dicom"))]
    r = client.post("/api/predict", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 1 and len(body["exams"]) == 1
    assert [e["file"] for e in body["errors"]] == ["x.dcm"]


def test_real_predictor_png_names_give_two_breasts_and_a_warning(client, app_env):  # noqa: F811
    files = [("files", (name, app_env.mammogram_png(0), "image/png")) for name in ("demo_L_CC.png", "demo_R_CC.png")]
    r = client.post("/api/predict", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(i["file"], i["laterality"], i["view"]) for i in body["images"]] == [
        ("demo_L_CC.png", "L", "CC"), ("demo_R_CC.png", "R", "CC")]
    assert sorted(b["laterality"] for b in body["breasts"]) == ["L", "R"]
    # the page has a sidecar field: the hint names it, not a command-line option the user cannot give here
    assert body["warnings"] == ["2 image file(s) without study information: each treated as its own exam; "
                                "add a sidecar CSV (path, patient, study, laterality, view) to group them"]
    assert "--sidecar" not in r.text


def test_real_predictor_sidecar_csv_groups_uploads_into_one_exam(client, app_env):  # noqa: F811
    files = [("files", (name, app_env.mammogram_png(0), "image/png")) for name in ("a.png", "b.png")]
    side = "path,patient,study,laterality,view\nfolder/a.png,pat-secret,st-secret,L,CC\nb.png,pat-secret,st-secret,R,CC\n"
    r = client.post("/api/predict", files=files + [("sidecar", ("side.csv", side.encode(), "text/csv"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["exams"]) == 1 and sorted(b["laterality"] for b in body["breasts"]) == ["L", "R"]
    assert body["warnings"] == [] and [i["file"] for i in body["images"]] == ["a.png", "b.png"]
    assert "-secret" not in r.text and {b["study"] for b in body["breasts"]} == {"exam-1"}  # never the CSV's IDs
    # a sidecar naming none of the uploads, or not a CSV with a path column: one 400 that says so
    bad = client.post("/api/predict", files=files + [("sidecar", ("side.csv", b"path\nzzz.png\n", "text/csv"))])
    assert bad.status_code == 400 and "none of its paths names an uploaded file" in bad.json()["detail"]
    bad = client.post("/api/predict", files=files + [("sidecar", ("side.csv", b"file,x\n", "text/csv"))])
    assert bad.status_code == 400 and "path column" in bad.json()["detail"]


def test_real_predictor_density_run_words_come_from_the_task(client):
    h = client.get("/api/health").json()
    w = h["wording"]
    assert w["task"] == "density" and w["title"].startswith("BI-RADS")
    assert (w["dense_label"], w["non_dense_label"]) == ("Dense (C/D)", "Not dense (A/B)")
    assert h["random_weights"] is None  # tiny-clip trained contrastively: trained weights
