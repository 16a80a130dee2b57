"""`mammolens listen` against a real Orthanc: storescu sends synthetic studies, the results arrive in Orthanc.

One Orthanc (generated config, free loopback ports) serves the module; the node runs as a subprocess so that a
test can ``kill -9`` it. Skips when Orthanc or dcmtk's storescu is not installed (CI installs both).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest

from _app_fixtures import app_env  # noqa: F401 — session fixture
from _peers import Listener, Orthanc, dcmsend, need_peers, storescu, wait_for

CAD_SR = "1.2.840.10008.5.1.4.1.1.88.50"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
WAIT = 180  # s: a loaded 2-core CI machine imports torch slowly


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    need_peers()
    o = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield o
    o.stop()


def _config(path: Path, **kw) -> Path:
    base = {"allowed_aets": ["MODALITY"], "idle_s": 1.0, "retry_base_s": 0.5, "retry_max_s": 2.0}
    base.update(kw)
    path.write_text(json.dumps(base), encoding="utf-8")  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def node(orthanc, app_env, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("node")
    ls = Listener(app_env.run, root / "spool", "--config", str(_config(root / "listen.yaml")),
                  "--send-to", orthanc.dest).start()
    yield ls
    ls.stop()


def _sent(results) -> None:
    for r in results:
        assert r.returncode == 0 and "E:" not in r.stderr + r.stdout, (r.stderr + r.stdout)[-2000:]


def _study_uid(files) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _orthanc_study(orthanc: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    """Every instance Orthanc holds for ``study_uid`` (parsed, pixels skipped)."""
    out = []
    for sid in orthanc.get("/studies"):
        st = orthanc.get(f"/studies/{sid}")
        if st["MainDicomTags"].get("StudyInstanceUID") != study_uid:
            continue
        for se in st["Series"]:
            for iid in orthanc.get(f"/series/{se}")["Instances"]:
                import urllib.request

                with urllib.request.urlopen(f"http://127.0.0.1:{orthanc.http}/instances/{iid}/file", timeout=10) as r:
                    out.append(pydicom.dcmread(io.BytesIO(r.read()), stop_before_pixels=True))
    return out


def _done(ls: Listener, n: int):
    return lambda: len(ls.status().get("done", [])) >= n and not ls.status().get("queue")


def _check_results(orthanc: Orthanc, files, dciodvfy=None) -> dict[str, list]:
    """The study's results are in Orthanc, in the source study, referencing exactly its images."""
    study = _study_uid(files)
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    got = _orthanc_study(orthanc, study)
    by_class: dict[str, list] = {}
    for ds in got:
        assert ds.StudyInstanceUID == study
        by_class.setdefault(str(ds.SOPClassUID), []).append(ds)
    assert len(by_class.get(CAD_SR, [])) == 1 and len(by_class.get(COMPREHENSIVE_SR, [])) == 1, sorted(by_class)
    for sr in (by_class[CAD_SR][0], by_class[COMPREHENSIVE_SR][0]):
        ev = {str(s.ReferencedSOPInstanceUID) for st in sr.CurrentRequestedProcedureEvidenceSequence
              for se in st.ReferencedSeriesSequence for s in se.ReferencedSOPSequence}
        assert ev == sources
        assert sr.SeriesInstanceUID not in {d.SeriesInstanceUID for d in got if str(d.SOPInstanceUID) in sources}
    assert by_class[CAD_SR][0].ContentTemplateSequence[0].TemplateIdentifier == "4000"
    overlays = by_class.get(SECONDARY_CAPTURE, [])
    assert sorted(str(o.SourceImageSequence[0].ReferencedSOPInstanceUID) for o in overlays) == sorted(sources)
    return by_class


# ---------------------------------------------------------------------------------------------- tests
def test_listen_answers_a_study_in_orthanc(node, orthanc, app_env, tmp_path, dciodvfy):  # noqa: F811
    files = app_env.study_files(0)
    _sent(storescu(node.port, files))
    wait_for(_done(node, 1), WAIT, "the study to be answered and sent", show=node.report)
    by_class = _check_results(orthanc, files)
    cad = tmp_path / "cad.dcm"
    import urllib.request

    iid = next(i for i in orthanc.get("/instances")
               if orthanc.get(f"/instances/{i}/simplified-tags").get("SOPInstanceUID") == by_class[CAD_SR][0].SOPInstanceUID)
    with urllib.request.urlopen(f"http://127.0.0.1:{orthanc.http}/instances/{iid}/file", timeout=10) as r:
        cad.write_bytes(r.read())
    assert [ln for ln in dciodvfy(cad) if "Study ID" not in ln] == []
    st = node.status()
    assert st["done"][0]["sent_to"] == [orthanc.dest] and st["counters"]["objects"] == len(files)
    text = (node.spool / "status.json").read_text() + node.log.read_text()
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    for ident in (str(ds.PatientID), str(ds.PatientName), str(ds.StudyInstanceUID)):
        assert ident not in text  # no patient identity in the status or the logs


def test_listen_refuses_an_unlisted_calling_ae(node, app_env):  # noqa: F811
    before = node.status()["counters"]["objects"]
    res = storescu(node.port, app_env.study_files(1)[:1], calling="INTRUDER")
    assert res[0].returncode != 0 and "Rejected" in res[0].stderr + res[0].stdout
    wait_for(lambda: node.status()["counters"]["rejected_ae"].get("INTRUDER") == 1, 10, "the rejection in the status")
    assert node.status()["counters"]["objects"] == before


def test_listen_stores_but_does_not_predict_ct_and_dx(node, orthanc, tmp_path):
    import numpy as np

    from mammolens.data.synthetic import write_dicom, write_non_mammogram

    uid = "1.2.826.0.1.3680043.8.498.99.1"
    dx = write_non_mammogram(tmp_path / "dx.dcm", "dx-abdomen", study_uid=uid, uid_seed=("dx",))
    ct = write_dicom(tmp_path / "ct.dcm", np.zeros((32, 32), np.uint16), sop_class="1.2.840.10008.5.1.4.1.1.2",
                     study_uid=uid, uid_seed=("ct",), extra={"Modality": "CT", "BodyPartExamined": "CHEST"})
    _sent(dcmsend(node.port, [dx, ct]))
    def reported():
        st = node.status()
        return st if [e["objects"] for e in st.get("not_predicted", [])] == [2] else None
    st = wait_for(reported, 30, "both objects in the status (status.json is rewritten each second)", show=node.report)
    entry = st["not_predicted"][0]
    assert entry["objects"] == 2 and set(entry["sop_classes"]) == {"CT Image Storage",
                                                                    "Digital X-Ray Image Storage - For Presentation"}
    key = entry["study"]
    assert len(list((node.spool / "studies" / key / "other").glob("*.dcm"))) == 2  # stored
    assert not any(s["study"] == key for s in st["done"] + st["failed"] + st["queue"])  # not predicted
    assert _orthanc_study(orthanc, uid) == []


def test_listen_delivers_when_the_destination_comes_back(node, orthanc, app_env):  # noqa: F811
    orthanc.stop()
    try:
        files = app_env.study_files(1)
        _sent(dcmsend(node.port, files))

        def retried():
            q = [s for s in node.status().get("queue", []) if s["state"] == "sending"]
            return q and any(d["attempts"] >= 2 for d in q[0].get("destinations", {}).values()) and q[0]
        item = wait_for(retried, WAIT, "failed send attempts while Orthanc is down")
        assert "could not be reached" in next(iter(item["destinations"].values()))["last_error"]
    finally:
        orthanc.start()
    wait_for(_done(node, 2), 60, "delivery after Orthanc came back", show=node.report)
    _check_results(orthanc, files)


def test_listen_kill9_then_restart_answers_each_study_once(orthanc, app_env, tmp_path):  # noqa: F811
    studies = [app_env.study_files(i) for i in (2, 3)]
    spool = tmp_path / "spool"
    cfg = _config(tmp_path / "listen.yaml")
    ls = Listener(app_env.run, spool, "--config", str(cfg), "--send-to", orthanc.dest, "--idle", "3600").start()
    try:
        _sent(dcmsend(ls.port, studies[0]))
        _sent(dcmsend(ls.port, studies[1][:2]))  # the second study only half received
    finally:
        ls.kill9()  # received, acknowledged, not answered
    assert not any(json.loads(ln)["ev"] == "answered" for ln in (spool / "journal.jsonl").read_text().splitlines())
    ls2 = Listener(app_env.run, spool, "--config", str(cfg), "--send-to", orthanc.dest, "--idle", "5",
                   port=ls.port).start()
    try:
        _sent(dcmsend(ls2.port, studies[1][2:]))  # the rest of the second study, after the restart
        wait_for(_done(ls2, 2), WAIT, "both studies answered after the restart", show=ls2.report)
    finally:
        ls2.stop()
    events = [json.loads(ln) for ln in (spool / "journal.jsonl").read_text().splitlines()]
    for files in studies:
        _check_results(orthanc, files)  # exactly one SR of each kind, one overlay per image
    from mammolens.node.spool import Spool

    run = events[-1]["run"]
    replay = Spool(spool)  # what a third start would see: nothing left to answer or send
    assert all(not s.needs_answer(run) and not s.unsent(run, [orthanc.dest]) for s in replay.studies.values())
    replay.close()
    answered = [e["study"] for e in events if e["ev"] == "answered"]
    assert len(answered) == len(set(answered)) == 2, answered  # exactly once per study and run
