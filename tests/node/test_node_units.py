"""The node's parts without a network peer: config, journal replay after a crash, back-off, deterministic answers,
the SCP's allow-list and C-ECHO (pynetdicom on loopback, in this process)."""

from __future__ import annotations

import json

import pydicom
import pytest

from _app_fixtures import app_env  # noqa: F401 — session fixture
from mammolens.node.config import NodeCfg, parse_destination
from mammolens.node.sender import backoff
from mammolens.node.spool import Spool


def test_parse_destination_and_errors():
    d = parse_destination("ORTHANC@127.0.0.1:4242")
    assert (d.ae_title, d.host, d.port) == ("ORTHANC", "127.0.0.1", 4242)
    for bad in ("ORTHANC@host", "@h:1", "A@h:70000", "WAY_TOO_LONG_AE_TITLE@h:1"):
        with pytest.raises(ValueError, match="AET@HOST:PORT|AE title"):
            parse_destination(bad)


def test_node_cfg_from_yaml_rejects_unknown_keys(tmp_path):
    (tmp_path / "a.yaml").write_text("ae_title: NODE\nallowed_aets: MODALITY\nidle_s: 3\n")
    cfg = NodeCfg.from_yaml(tmp_path / "a.yaml", port=1234, host=None)
    assert (cfg.ae_title, cfg.allowed_aets, cfg.idle_s, cfg.port, cfg.host) == ("NODE", ["MODALITY"], 3, 1234, "127.0.0.1")
    (tmp_path / "b.yaml").write_text("ae_tittle: NODE\n")
    with pytest.raises(ValueError, match="b.yaml.*ae_tittle"):
        NodeCfg.from_yaml(tmp_path / "b.yaml")


def test_backoff_doubles_up_to_the_cap():
    assert [backoff(a, 1.0, 5.0) for a in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_spool_replay_drops_a_torn_line_and_keeps_state(tmp_path):
    sp = Spool(tmp_path)
    sp.store(b"x" * 10, "study-a", "1.2.3", "1.2.3.1", "1.2.840.10008.5.1.4.1.1.1.2", True)
    sp.store(b"y" * 10, "study-a", "1.2.3", "1.2.3.2", "1.2.840.10008.5.1.4.1.1.2", False)
    sp.log("answered", "study-a", run="r1", n=2, files=["results/study-a/r1/x.dcm"])
    sp.close()
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"t": 1, "ev": "sent", "study": "study-a", "run": "r1", "n": 2, "de')  # kill -9 mid-write
    (tmp_path / "tmp" / "half.dcm.part").write_bytes(b"partial")
    (tmp_path / "tmp" / "predict-r1" / "dicom").mkdir(parents=True)  # a predict pass cut short
    sp2 = Spool(tmp_path)
    s = sp2.studies["study-a"]
    assert s.n == 2 and not s.needs_answer("r1") and s.unsent("r1", ["D"]) == ["D"]  # the torn "sent" never happened
    assert s.needs_answer("r2")  # another run answers again
    assert not list((tmp_path / "tmp").iterdir())
    sp2.log("sent", "study-a", run="r1", n=2, dest="D")
    sp2.store(b"z", "study-a", "1.2.3", "1.2.3.3", "1.2.840.10008.5.1.4.1.1.1.2", True)  # a late image
    assert sp2.studies["study-a"].needs_answer("r1")
    sp2.close()
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert all(json.loads(ln) for ln in lines)


def test_answer_uids_are_deterministic_per_study_and_run(app_env, tmp_path, dciodvfy):  # noqa: F811
    import shutil

    from mammolens.inference import Predictor, study_key
    from mammolens.node.answer import answer_studies, run_fingerprint

    p = Predictor.from_run(app_env.run, device="cpu", workers=0)
    files = app_env.study_files(0)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    key = study_key(uid, uid)
    got = []
    for name, run in (("a", run_fingerprint(app_env.run)), ("b", run_fingerprint(app_env.run)), ("c", "other-run")):
        sp = Spool(tmp_path / name)
        for f in files:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            dst = sp.study_dir(key) / "mammo" / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
            sp.log("received", key, uid=uid, sop=f.stem, sop_class=str(ds.SOPClassUID), mammo=True)
        (ans,) = answer_studies(p, sp, run, {key: uid})
        assert not ans.error and {f.name for f in ans.files} >= {"density_sr.dcm", "cad_sr.dcm"}
        got.append(sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in ans.files))
        sp.close()
    assert got[0] == got[1] and not set(got[0]) & set(got[2])
    assert len(set(got[0])) == len(files) + 2
    cad = tmp_path / "a" / "results" / key / run_fingerprint(app_env.run) / "cad_sr.dcm"
    assert [ln for ln in dciodvfy(cad) if "Study ID" not in ln] == []


def test_scp_echo_and_allow_list_in_process(app_env, tmp_path):  # noqa: F811
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from mammolens.node import Node, NodeCfg

    cfg = NodeCfg(run=str(app_env.run), spool=str(tmp_path / "spool"), port=0, allowed_aets=["GOOD"], device="cpu")
    node = Node(cfg, predictor=object()).start()
    try:
        results = {}
        for aet in ("GOOD", "BAD"):
            scu = AE(ae_title=aet)
            scu.add_requested_context(Verification)
            assoc = scu.associate("127.0.0.1", node.port, ae_title="MAMMOLENS")
            results[aet] = assoc.is_established and int(assoc.send_c_echo().Status) == 0
            if assoc.is_established:
                assoc.release()
        assert results == {"GOOD": True, "BAD": False}
        assert node.status()["counters"]["rejected_ae"] == {"BAD": 1} and node.status()["counters"]["echo"] == 1
    finally:
        node.stop()


def test_scp_tls_accepts_tls_peers_only(app_env, tmp_path):  # noqa: F811
    import shutil
    import ssl
    import subprocess

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from mammolens.node import Node, NodeCfg

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    cfg = NodeCfg(run=str(app_env.run), spool=str(tmp_path / "spool"), port=0, device="cpu",
                  tls_cert=str(cert), tls_key=str(key))
    node = Node(cfg, predictor=object()).start()
    try:
        ok = {}
        for name, tls in (("tls", (ssl.create_default_context(cafile=str(cert)), "127.0.0.1")), ("plain", None)):
            scu = AE(ae_title="ANY")
            scu.acse_timeout = scu.network_timeout = 5
            scu.add_requested_context(Verification)
            assoc = scu.associate("127.0.0.1", node.port, ae_title="MAMMOLENS", tls_args=tls)
            ok[name] = assoc.is_established and int(assoc.send_c_echo().Status) == 0
            if assoc.is_established:
                assoc.release()
        assert ok == {"tls": True, "plain": False}
    finally:
        node.stop()


def _echo_assoc(port: int, aet: str = "ANY"):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    scu = AE(ae_title=aet)
    scu.acse_timeout = scu.network_timeout = 5
    scu.add_requested_context(Verification)
    return scu.associate("127.0.0.1", port, ae_title="MAMMOLENS")


def test_scp_bounds_associations_and_refuses_when_the_disk_is_full(app_env, tmp_path):  # noqa: F811
    from mammolens.node import Node, NodeCfg

    cfg = NodeCfg(run=str(app_env.run), spool=str(tmp_path / "a"), port=0, device="cpu", max_associations=1)
    node = Node(cfg, predictor=object()).start()
    try:
        first = _echo_assoc(node.port)
        second = _echo_assoc(node.port)
        assert first.is_established and second.is_rejected  # transient, local limit exceeded
        first.release()
        third = _echo_assoc(node.port)
        assert third.is_established
        third.release()
    finally:
        node.stop()
    full = NodeCfg(run=str(app_env.run), spool=str(tmp_path / "b"), port=0, device="cpu", max_disk_fraction=1e-9)
    node = Node(full, predictor=object()).start()
    try:
        assoc = _echo_assoc(node.port)
        assert assoc.is_rejected and node.status()["counters"]["refused_disk"] == 1
        assert node.status()["disk"]["refusing"] is True
    finally:
        node.stop()


def test_answer_a_study_the_gate_refuses_fails_with_the_reason(app_env, tmp_path):  # noqa: F811
    from mammolens.data.synthetic import write_non_mammogram
    from mammolens.inference import Predictor, study_key
    from mammolens.node.answer import answer_studies

    uid = "1.2.826.0.1.3680043.8.498.99.7"
    key = study_key(uid, uid)
    sp = Spool(tmp_path / "spool")
    f = write_non_mammogram(sp.study_dir(key) / "mammo" / "flat.dcm", "mg-flatfield", study_uid=uid, uid_seed=("ff",))
    sp.log("received", key, uid=uid, sop="flat", sop_class=str(pydicom.dcmread(f).SOPClassUID), mammo=True)
    (ans,) = answer_studies(Predictor.from_run(app_env.run, device="cpu", workers=0), sp, "r", {key: uid})
    assert ans.files == [] and ans.error.startswith("no assessable mammogram") and "flat" in ans.error.lower()
    assert uid not in ans.error
    sp.close()
