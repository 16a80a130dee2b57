"""The DICOM node's settings: one dataclass, filled from a YAML file and/or command-line flags."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Destination", "NodeCfg", "parse_destination"]

_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 printable ASCII characters, no backslash


def _check_aet(aet: str, what: str) -> str:
    aet = str(aet).strip()
    if not _AET.match(aet):
        raise ValueError(f"{what} {aet!r} is not a DICOM AE title (1-16 printable ASCII characters, no backslash)")
    return aet


@dataclass(frozen=True)
class Destination:
    """Where results go: a C-STORE SCP."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AET@HOST:PORT`` → :class:`Destination` (``ValueError`` naming the text when it is not that)."""
    m = re.match(r"^(?P<aet>[^@]+)@(?P<host>[^:@]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$", str(text).strip())
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"--send-to {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
    return Destination(_check_aet(m["aet"], "destination AE title"), m["host"].strip("[]"), int(m["port"]))


@dataclass
class NodeCfg:
    """Settings of ``mammolens listen`` (``docs/dicom_node.md``).

    Attributes:
        run: the run folder that predicts.
        spool: folder of the received objects, the journal, the results and ``status.json``.
        ae_title: this node's AE title (called AE title checked when ``check_called_aet``).
        host: address to bind; loopback unless told otherwise.
        port: DICOM port.
        send_to: destinations (``AET@HOST:PORT``) of the results; none: results stay in the spool.
        allowed_aets: calling AE titles accepted; empty accepts any (a warning at start).
        check_called_aet: reject associations that call another AE title.
        max_associations: concurrent associations; more are rejected (transient, local limit exceeded).
        idle_s: a study is complete this many seconds after its last object.
        max_disk_fraction: the spool's file system used above this fraction refuses new associations
            (transient) and new objects (Out of Resources, 0xA700).
        min_free_mb: the same refusal below this much free space.
        retry_base_s / retry_max_s: back-off of a failed send (doubling from base to max).
        max_attempts: sends tried before a study is failed (0: keep trying).
        batch_studies: complete studies predicted together in one pass at most.
        tls_cert / tls_key: PEM files; both set → DICOM over TLS (the port then speaks TLS only).
        tls_ca: PEM bundle; set → peers must present a certificate signed by it (and results are sent over
            TLS with it as trust anchor).
        device, batch_size, workers, precision: the Predictor's (``workers=0``: read in the node's process).
        overlays: GradCAM overlay Secondary Captures with the results.
    """

    run: str = ""
    spool: str = "mammolens-spool"
    ae_title: str = "MAMMOLENS"
    host: str = "127.0.0.1"
    port: int = 11112
    send_to: list[str] = field(default_factory=list)
    allowed_aets: list[str] = field(default_factory=list)
    check_called_aet: bool = True
    max_associations: int = 8
    idle_s: float = 10.0
    max_disk_fraction: float = 0.95
    min_free_mb: float = 512.0
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    max_attempts: int = 0
    batch_studies: int = 16
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    device: str = "auto"
    batch_size: int = 16
    workers: int = 0
    precision: str = "fp32"
    overlays: bool = True

    def __post_init__(self):
        self.ae_title = _check_aet(self.ae_title, "ae_title")
        self.allowed_aets = [_check_aet(a, "allowed AE title") for a in self.allowed_aets]
        self.send_to = [str(d) for d in self.send_to]
        for d in self.send_to:
            parse_destination(d)
        if not 0 <= int(self.port) < 65536:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        if int(self.max_associations) < 1:
            raise ValueError(f"max_associations must be >= 1, got {self.max_associations}")
        if not 0 < float(self.max_disk_fraction) <= 1:
            raise ValueError(f"max_disk_fraction must be in (0, 1], got {self.max_disk_fraction}")
        if float(self.idle_s) < 0 or float(self.retry_base_s) <= 0 or float(self.retry_max_s) < float(self.retry_base_s):
            raise ValueError("idle_s must be >= 0 and 0 < retry_base_s <= retry_max_s")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both tls_cert and tls_key (PEM files)")

    @property
    def destinations(self) -> list[Destination]:
        return [parse_destination(d) for d in self.send_to]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeCfg:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown listen setting(s) {unknown}; known: {sorted(names)}")
        d = dict(d)
        for key in ("send_to", "allowed_aets"):
            if isinstance(d.get(key), str):
                d[key] = [d[key]]
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> NodeCfg:
        """The YAML file's settings, then ``overrides`` (non-None values) on top."""
        import yaml

        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read the listen config ({e})") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping of listen settings, got {type(d).__name__}")
        d.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
