"""Load on the DICOM node: N synthetic studies sent at once over S parallel associations (dcmtk's dcmsend) to
`mammolens listen`, results C-STOREd to a real Orthanc; all must be answered.

Prints studies/min (first object sent → last study delivered), the node's peak memory (VmHWM of the listen
process) and the Orthanc counts. Usage (a tiny-clip run is trained when RUN is not given):

    PYTHONPATH=TREE/src nice -n 10 python experiments/node_load.py [--run RUN] [--studies 100] [--senders 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "node"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _peers import Listener, Orthanc, dcmsend, wait_for  # noqa: E402


def _vmhwm(pid: int) -> int:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmHWM:"):
            return int(ln.split()[1]) // 1024
    return -1


def _journal_counts(spool: Path) -> dict:
    """Answered / sent events per study, and the result objects the last answers hold."""
    answered: dict[str, int] = {}
    sent: dict[str, int] = {}
    files: dict[str, int] = {}
    for ln in (spool / "journal.jsonl").read_text().splitlines():
        e = json.loads(ln)
        if e["ev"] == "answered":
            answered[e["study"]] = answered.get(e["study"], 0) + 1
            files[e["study"]] = len(e["files"])
        elif e["ev"] == "sent":
            sent[e["study"]] = sent.get(e["study"], 0) + 1
    return {"answered_studies": len(answered), "answered_more_than_once": sum(v > 1 for v in answered.values()),
            "sent_more_than_once": sum(v > 1 for v in sent.values()), "result_objects": sum(files.values())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path)
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16, help="batch_studies of the node")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--kill-after", type=float, default=0.0,
                    help="kill -9 the node this many seconds after the sends finished, restart it on the same spool")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="node-load-"))
    from mammolens.data.synthetic import make_cohort

    t = time.time()
    if a.run is None:
        from _app_fixtures import build_app_env

        class _Tmp:
            def mktemp(self, name):
                p = work / name
                p.mkdir(parents=True, exist_ok=True)
                return p

        a.run = build_app_env(_Tmp()).run
    df = make_cohort(work / "load", n_patients=a.studies, seed=7, image_size=(128, 104))
    files = sorted(str(work / "load" / p) for p in df["image_path"])
    by_study: dict[str, list[str]] = {}
    for f in files:
        by_study.setdefault(str(Path(f).parent), []).append(f)
    studies = list(by_study.values())
    print(f"{len(studies)} studies, {len(files)} objects written in {time.time() - t:.0f} s", flush=True)

    orthanc = Orthanc(work / "orthanc").start()
    cfg = work / "listen.yaml"
    cfg.write_text(json.dumps({"idle_s": 2.0, "batch_studies": a.batch, "max_associations": a.senders + 2,
                               "allowed_aets": ["LOAD"]}))
    ls = Listener(a.run, work / "spool", "--config", str(cfg), "--send-to", orthanc.dest).start()
    try:
        chunks = [studies[i::a.senders] for i in range(a.senders)]
        t0 = time.time()
        with ThreadPoolExecutor(a.senders) as pool:  # S concurrent associations, each a stream of whole studies
            results = list(pool.map(lambda c: dcmsend(ls.port, [f for s in c for f in s], calling="LOAD")[0], chunks))
        t_sent = time.time() - t0
        bad = [r.stderr[-500:] for r in results if r.returncode != 0]
        assert not bad, bad
        if a.kill_after:
            time.sleep(a.kill_after)
            ls.kill9()
            print(f"kill -9 at {time.time() - t0:.1f} s: {_journal_counts(work / 'spool')}", flush=True)
            ls = Listener(a.run, work / "spool", "--config", str(cfg), "--send-to", orthanc.dest, port=ls.port).start()
        wait_for(lambda: len(ls.status().get("done", [])) >= len(studies) and not ls.status()["queue"], 3600,
                 "every study answered", every=1.0, show=ls.report)
        t_done = time.time() - t0
        peak = _vmhwm(ls.proc.pid)
        st = ls.status()
        n_inst = len(orthanc.get("/instances"))
        journal = _journal_counts(work / "spool")
        load = os.getloadavg()
    finally:
        ls.stop()
        orthanc.stop()
    print(json.dumps({"studies": len(studies), "objects": len(files), "senders": a.senders, "batch_studies": a.batch,
                      "send_s": round(t_sent, 1), "all_answered_s": round(t_done, 1),
                      "studies_per_min": round(len(studies) / t_done * 60, 1), "node_peak_rss_mib": peak,
                      "done": st["totals"]["done"], "failed": st["totals"]["failed"], "orthanc_instances": n_inst,
                      "kill_after_s": a.kill_after, **journal,
                      "loadavg": [round(x, 1) for x in load], "uname": subprocess.getoutput("uname -m")}, indent=1))


if __name__ == "__main__":
    main()
