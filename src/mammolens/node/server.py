"""The DICOM node: a Storage SCP that spools, a predict thread that answers complete studies, a send thread.

``Node(cfg).start()`` binds the SCP (non-blocking); ``serve(cfg)`` runs until SIGINT/SIGTERM. Threads:

- pynetdicom's association threads (at most ``cfg.max_associations``): C-ECHO; C-STORE writes the object to the
  spool and journals it *before* answering success;
- the predict thread: every study idle for ``cfg.idle_s`` with objects not yet answered by this run is predicted
  (up to ``cfg.batch_studies`` together) through ``node.answer``;
- the send thread: every answered, unsent study is C-STOREd to each destination, retried with back-off.

``SPOOL/status.json`` (rewritten atomically each second and after every change) holds queue, done, failed and
not-predicted studies by pseudonym, never a patient identifier (``read_status``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from mammolens.node.answer import answer_studies, run_fingerprint
from mammolens.io.gating import MAMMOGRAPHY_SOP_CLASSES  # the one list: what the header gate predicts
from mammolens.node.config import NodeCfg
from mammolens.node.sender import SendError, backoff, send_files
from mammolens.node.spool import Spool, atomic_write

log = logging.getLogger("mammolens.node")

__all__ = ["MAMMOGRAPHY_SOP_CLASSES", "Node", "TRANSFER_SYNTAXES", "read_status", "serve"]

TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 Image Compression
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless Image Compression
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Lossy (Near-Lossless) Image Compression
    "1.2.840.10008.1.2.5",  # RLE Lossless
]
"""Transfer syntaxes accepted for every storage SOP class (the first the peer proposes wins)."""

_STATUS_EVERY_S = 1.0
_KEEP_DONE = 200  # done / failed entries listed in status.json (totals count all)


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid


class Node:
    """One running DICOM node (see the module docstring)."""

    def __init__(self, cfg: NodeCfg, predictor=None):
        from mammolens.inference import Predictor

        if not cfg.run:
            raise ValueError("listen needs a run folder (the RUN argument or `run:` in the config)")
        self.cfg = cfg
        self.spool = Spool(cfg.spool)
        self.run = run_fingerprint(cfg.run)
        self.predictor = predictor or Predictor.from_run(cfg.run, device=cfg.device, batch_size=cfg.batch_size,
                                                         workers=cfg.workers, precision=cfg.precision)
        self.destinations = [str(d) for d in cfg.destinations]
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._server = None
        self._threads: list[threading.Thread] = []
        self.started = time.time()
        self.counters: dict[str, Any] = {"associations": 0, "rejected_ae": {}, "refused_disk": 0, "refused_busy": 0,
                                         "objects": 0, "echo": 0}
        self.predicting: set[str] = set()
        self.retry: dict[tuple[str, str], dict[str, Any]] = {}  # (study, destination) -> attempts, next, error
        if not cfg.allowed_aets:
            log.warning("no allowed_aets configured: any calling AE title may store objects")

    # ------------------------------------------------------------------------------ SCP
    def _ae(self):
        from pynetdicom import AE, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.cfg.ae_title)
        ae.maximum_associations = int(self.cfg.max_associations)
        ae.require_calling_aet = list(self.cfg.allowed_aets)
        ae.require_called_aet = bool(self.cfg.check_called_aet)
        ae.add_supported_context(Verification)
        uids = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts} | set(MAMMOGRAPHY_SOP_CLASSES)
        for uid in sorted(uids):
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        return ae

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.cfg.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        if self.cfg.tls_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.cfg.tls_ca)
        return ctx

    def _disk_full(self) -> str:
        used, free = self.spool.disk()
        if used > self.cfg.max_disk_fraction:
            return f"spool disk {used:.0%} used (limit {self.cfg.max_disk_fraction:.0%})"
        if free < self.cfg.min_free_mb:
            return f"spool disk {free:.0f} MiB free (limit {self.cfg.min_free_mb:.0f} MiB)"
        return ""

    def _on_requested(self, event) -> None:
        full = self._disk_full()
        if full:
            log.warning("association refused: %s", full)
            with self._lock:
                self.counters["refused_disk"] += 1
            event.assoc.acse.send_reject(0x02, 0x03, 0x01)  # transient, presentation: temporary congestion
            event.assoc.kill()  # as pynetdicom's own rejections do: the reject PDU goes out before the socket closes

    def _on_rejected(self, event) -> None:
        aet = str(event.assoc.requestor.ae_title).strip()
        with self._lock:
            if self.cfg.allowed_aets and aet not in self.cfg.allowed_aets:
                self.counters["rejected_ae"][aet] = self.counters["rejected_ae"].get(aet, 0) + 1
            else:
                self.counters["refused_busy"] += 1
        log.warning("association from %s rejected", aet)

    def _on_accepted(self, event) -> None:
        with self._lock:
            self.counters["associations"] += 1

    def _on_echo(self, event) -> int:
        with self._lock:
            self.counters["echo"] += 1
        return 0x0000

    def _on_store(self, event) -> int:
        from mammolens.inference import study_key

        if self._disk_full():
            return 0xA700  # Out of Resources
        try:
            ds = event.dataset
            study_uid = str(ds.get("StudyInstanceUID", "") or "")
        except Exception:  # noqa: BLE001 — an undecodable dataset is the peer's error, not a crash of the node
            log.warning("C-STORE: dataset could not be decoded")
            return 0xC210
        if not study_uid:
            return 0xA900  # Data Set does not match SOP Class: a storage object needs a StudyInstanceUID
        sop_class = str(event.request.AffectedSOPClassUID)
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        try:
            self.spool.store(event.encoded_dataset(include_meta=True), study_key(study_uid, study_uid), study_uid,
                             sop_uid, sop_class, sop_class in MAMMOGRAPHY_SOP_CLASSES)
        except OSError as e:
            log.error("C-STORE: could not write to the spool (%s)", type(e).__name__)
            return 0xA700
        with self._lock:
            self.counters["objects"] += 1
        self._wake.set()
        return 0x0000

    # ------------------------------------------------------------------------------ predict / send loops
    def _ready(self) -> tuple[dict[str, str], dict[str, int]]:
        now, cfg = time.time(), self.cfg
        snap = self.spool.snapshot()
        # after a (re)start every pending study waits a full idle period: its sender may still be resending
        ready = sorted((s.last, k) for k, s in snap.items()
                       if s.needs_answer(self.run) and now - max(s.last, self.started) >= cfg.idle_s)
        batch = {k: snap[k].uid for _, k in ready[: max(1, cfg.batch_studies)]}
        counts = {k: snap[k].n for k in batch}
        for k, s in snap.items():  # studies holding only non-mammography objects: reported once per object count
            if not s.mammo and s.other and s.not_predicted != s.n and now - max(s.last, self.started) >= cfg.idle_s:
                kinds = sorted({_sop_class_name(c) for c in s.other.values()})
                self.spool.log("not_predicted", k, n=s.n, reason="no mammography object: " + ", ".join(kinds))
        return batch, counts

    def _predict_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            try:
                batch, counts = self._ready()
                if not batch:
                    continue
                self.predicting = set(batch)
                t0 = time.time()
                answers = answer_studies(self.predictor, self.spool, self.run, batch, overlays=self.cfg.overlays)
                for a in answers:
                    if a.error:
                        self.spool.log("failed", a.key, run=self.run, n=counts[a.key], reason=a.error)
                        log.warning("study %s not answered: %s", a.key, a.error)
                    else:
                        files = [str(f.relative_to(self.spool.root)) for f in a.files]
                        self.spool.log("answered", a.key, run=self.run, n=counts[a.key], files=files, notes=a.notes)
                log.info("%d studies predicted in %.1f s", len(batch), time.time() - t0)
            except Exception:  # noqa: BLE001 — the loop survives; the study is retried on the next wake
                log.exception("predict pass failed")
                self._stop.wait(1.0)
            finally:
                self.predicting = set()
                self._write_status()

    def _send_ctx(self) -> ssl.SSLContext | None:
        if not self.cfg.tls_ca:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.cfg.tls_ca)
        if self.cfg.tls_cert:
            ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        return ctx

    def _send_loop(self) -> None:
        dests = {str(d): d for d in self.cfg.destinations}
        while not self._stop.is_set():
            self._stop.wait(0.2)
            if not dests:
                continue
            now = time.time()
            for key, s in self.spool.snapshot().items():
                for d in s.unsent(self.run, list(dests)):
                    r = self.retry.setdefault((key, d), {"attempts": 0, "next": 0.0, "error": ""})
                    if r["next"] > now or self._stop.is_set():
                        continue
                    files = [self.spool.root / f for f in s.results.get(self.run, [])]
                    try:
                        send_files(dests[d], files, self.cfg.ae_title, ssl_context=self._send_ctx())
                    except (SendError, OSError, RuntimeError) as e:
                        r["attempts"] += 1
                        r["error"] = str(e)[:200]
                        r["next"] = time.time() + backoff(r["attempts"], self.cfg.retry_base_s, self.cfg.retry_max_s)
                        log.warning("study %s to %s: attempt %d failed (%s)", key, d, r["attempts"], r["error"])
                        if self.cfg.max_attempts and r["attempts"] >= self.cfg.max_attempts:
                            self.spool.log("failed", key, run=self.run, n=s.n,
                                           reason=f"not delivered to {d} after {r['attempts']} attempts: {r['error']}")
                        continue
                    self.spool.log("sent", key, run=self.run, n=s.n, dest=d)
                    self.retry.pop((key, d), None)
                    log.info("study %s: %d result objects sent to %s", key, len(files), d)

    # ------------------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        snap = self.spool.snapshot()
        now = time.time()
        queue, done, failed, other = [], [], [], []
        for k, s in sorted(snap.items(), key=lambda kv: kv[1].last):
            if s.mammo and s.failed.get(self.run, (-1, ""))[0] == s.n:
                failed.append({"study": k, "objects": s.n, "reason": s.failed[self.run][1]})
            elif s.needs_answer(self.run):
                state = "predicting" if k in self.predicting else (
                    "receiving" if now - max(s.last, self.started) < self.cfg.idle_s else "waiting")
                queue.append({"study": k, "state": state, "objects": s.n})
            elif s.unsent(self.run, self.destinations):
                item = {"study": k, "state": "sending", "objects": s.n}
                for d in s.unsent(self.run, self.destinations):
                    r = self.retry.get((k, d))
                    if r:
                        item.setdefault("destinations", {})[d] = {"attempts": r["attempts"], "last_error": r["error"]}
                queue.append(item)
            elif s.mammo:
                done.append({"study": k, "objects": s.n, "results": len(s.results.get(self.run, [])),
                             "sent_to": sorted(s.sent.get(self.run, {}))})
            if s.other:
                kinds: dict[str, int] = {}
                for c in s.other.values():
                    kinds[_sop_class_name(c)] = kinds.get(_sop_class_name(c), 0) + 1
                other.append({"study": k, "objects": len(s.other), "sop_classes": kinds,
                              "reason": "not a mammography storage SOP class: stored, not predicted"})
        used, free = self.spool.disk()
        with self._lock:
            counters = json.loads(json.dumps(self.counters))
        return {"node": {"ae_title": self.cfg.ae_title, "host": self.cfg.host, "port": self.cfg.port, "pid": os.getpid(),
                         "run": Path(self.cfg.run).name, "run_fingerprint": self.run, "started": self.started,
                         "updated": now, "destinations": self.destinations},
                "disk": {"used_fraction": round(used, 4), "free_mib": round(free, 1), "refusing": bool(self._disk_full())},
                "counters": counters,
                "totals": {"queue": len(queue), "done": len(done), "failed": len(failed), "not_predicted": len(other)},
                "queue": queue, "done": done[-_KEEP_DONE:], "failed": failed[-_KEEP_DONE:], "not_predicted": other}

    def _write_status(self) -> None:
        try:
            data = json.dumps(self.status(), indent=1).encode()
            atomic_write(self.spool.root / "status.json", data, self.spool.root / "tmp")
        except OSError:
            log.exception("status.json not written")

    def _status_loop(self) -> None:
        while not self._stop.wait(_STATUS_EVERY_S):
            self._write_status()

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> Node:
        from pynetdicom import evt

        self.started = time.time()
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_REQUESTED, self._on_requested), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_ACCEPTED, self._on_accepted)]
        self._server = self._ae().start_server((self.cfg.host, int(self.cfg.port)), block=False,
                                               evt_handlers=handlers, ssl_context=self._ssl())
        for fn in (self._predict_loop, self._send_loop, self._status_loop):
            t = threading.Thread(target=fn, name=f"node-{fn.__name__.strip('_')}", daemon=True)
            t.start()
            self._threads.append(t)
        self._write_status()
        self._wake.set()
        log.info("listening as %s on %s:%d (run %s); spool %s", self.cfg.ae_title, self.cfg.host,
                 self.port, self.run, self.spool.root)
        return self

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else int(self.cfg.port)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._server is not None:
            self._server.shutdown()
        for t in self._threads:
            t.join(timeout=30)
        self._write_status()
        self.spool.close()


def serve(cfg: NodeCfg) -> None:
    """Run a node until SIGINT or SIGTERM."""
    node = Node(cfg).start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(json.dumps({"listening": f"{cfg.ae_title}@{cfg.host}:{node.port}", "pid": os.getpid(),
                      "spool": str(node.spool.root)}), flush=True)
    done.wait()
    node.stop()


def read_status(spool: str | Path) -> dict[str, Any]:
    """The status a node last wrote in ``spool`` (``FileNotFoundError`` naming the file when there is none)."""
    path = Path(spool) / "status.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no status (is `mammolens listen` running with this spool?)")
    return json.loads(path.read_text(encoding="utf-8"))
