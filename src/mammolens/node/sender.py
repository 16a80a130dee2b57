"""C-STORE results to a destination; the caller retries with :func:`backoff` while it is down."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

import pydicom

from mammolens.node.config import Destination

__all__ = ["SendError", "backoff", "send_files"]

_OK = {0x0000, 0xB000, 0xB007, 0xB006}  # success and the storage warnings (coercion, elements discarded)


class SendError(RuntimeError):
    """A destination refused, could not be reached or failed an object (the message says which)."""


def backoff(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` failures so far): base, 2·base, 4·base... ≤ max."""
    return float(min(max_s, base_s * 2 ** max(0, attempt - 1)))


def send_files(dest: Destination, files: Sequence[Path], calling_aet: str, *, ssl_context: ssl.SSLContext | None = None,
               timeout: float = 30.0) -> int:
    """C-STORE every file over one association (each in its own transfer syntax); returns the number sent.

    Raises:
        SendError: the association was rejected or aborted, or an object got a failure status.
    """
    from pynetdicom import AE

    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for cx in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
        ae.add_requested_context(cx[0], cx[1])
    tls = (ssl_context, dest.host) if ssl_context is not None else None
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "could not be reached"
        raise SendError(f"{dest} {why}")
    try:
        for f, ds in zip(files, datasets):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"{dest}: no response to C-STORE of {Path(f).name} (association aborted or timed out)")
            if int(code) not in _OK:
                raise SendError(f"{dest}: C-STORE of {Path(f).name} failed with status 0x{int(code):04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return len(files)
