"""Real peers for the DICOM node tests: an Orthanc started on free loopback ports, dcmtk's storescu, and a
``mammolens listen`` subprocess. Everything skips cleanly when Orthanc or storescu is not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
def _dcmtk(name: str) -> str | None:
    """dcmtk's tool: the one beside dcmsend (pynetdicom installs a Python `storescu` of its own into the venv,
    earlier on PATH, with other options)."""
    for folder in [os.path.dirname(shutil.which("dcmsend") or ""), "/usr/bin", "/usr/local/bin"]:
        path = os.path.join(folder, name) if folder else ""
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


STORESCU = _dcmtk("storescu")
DCMSEND = shutil.which("dcmsend")
SRC = Path(__file__).resolve().parents[2] / "src"


def need_peers() -> None:
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    if STORESCU is None or DCMSEND is None:
        pytest.skip("storescu/dcmsend are not installed (Debian package dcmtk)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float, what: str, every: float = 0.2, show=None):
    end = time.time() + timeout
    while time.time() < end:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{show()}" if show else ""))


class Orthanc:
    """One Orthanc with its own storage in ``root`` (same ports across ``stop``/``start``)."""

    def __init__(self, root: Path, aet: str = "ORTHANC"):
        self.root, self.aet = root, aet
        self.http, self.dicom = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        cfg = {"Name": "mammolens-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
               "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": aet, "RemoteAccessAllowed": False,
               "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
               "DicomServerEnabled": True, "HttpServerEnabled": True, "Plugins": [], "StorageCompression": False,
               "ConcurrentJobs": 1, "HttpThreadsCount": 4, "DicomThreadsCount": 4, "LimitFindResults": 0,
               "SaveJobs": False}
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps(cfg), encoding="utf-8")

    @property
    def dest(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom}"

    def start(self) -> Orthanc:
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._alive, 30, "Orthanc's REST API")
        return self

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited with code {self.proc.returncode}")
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def instances(self) -> list[dict]:
        """Every instance's tags (``/instances/ID/simplified-tags``) with its study and series UIDs."""
        out = []
        for iid in self.get("/instances"):
            tags = self.get(f"/instances/{iid}/simplified-tags")
            out.append(tags)
        return out


_PROPOSE = {"1.2.840.10008.1.2.1": "-x=", "1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.4.90": "-xv",
            "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.5": "-xr"}


def storescu(port: int, files, calling: str = "MODALITY", called: str = "MAMMOLENS") -> list[subprocess.CompletedProcess]:
    """dcmtk's storescu sending ``files``: one association per transfer syntax among them (storescu proposes one
    compressed syntax per call), each file in its own syntax."""
    import pydicom

    groups: dict[str, list] = {}
    for f in files:
        ts = str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(_PROPOSE.get(ts, "-x="), []).append(str(f))
    return [subprocess.run([STORESCU, "-aet", calling, "-aec", called, flag, "-nh", "127.0.0.1", str(port), *fs],
                           capture_output=True, text=True, timeout=60) for flag, fs in groups.items()]


def dcmsend(port: int, files, calling: str = "MODALITY", called: str = "MAMMOLENS") -> list[subprocess.CompletedProcess]:
    """dcmtk's dcmsend: proposes exactly the SOP class and transfer syntax of each file (storescu's built-in list
    lacks Breast Tomosynthesis); ``-dn``: never decompresses, so the node receives what the files hold."""
    return [subprocess.run([DCMSEND, "-aet", calling, "-aec", called, "-dn", "-nh", "127.0.0.1", str(port),
                            *map(str, files)], capture_output=True, text=True, timeout=60)]


class Listener:
    """``mammolens listen`` in a subprocess (so that the tests can ``kill -9`` it)."""

    def __init__(self, run: Path, spool: Path, *args: str, port: int | None = None):
        self.run, self.spool, self.args = run, spool, list(args)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = spool.parent / f"{spool.name}.log"

    def start(self) -> Listener:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "mammolens", "listen", str(self.run), "--port", str(self.port),
               "--spool", str(self.spool), "--device", "cpu", *self.args]
        self.out = open(self.log, "a", encoding="utf-8")  # noqa: SIM115 — closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, env=env)
        wait_for(self._listening, 300, "mammolens listen to bind its port")
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"listen exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def status(self) -> dict:
        path = self.spool / "status.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def report(self) -> str:
        """The status and the log's tail (for a failing wait)."""
        return json.dumps(self.status(), indent=1)[-4000:] + "\n--- log\n" + self.log.read_text()[-4000:]

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.out.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.out.close()
