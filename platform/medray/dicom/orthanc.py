"""A private Orthanc PACS (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the tests and the demo.

:func:`start_orthanc` runs one Orthanc process with its own configuration and storage folder on
free ports (DICOM and HTTP, both on 127.0.0.1), its DICOMweb plugin enabled (QIDO-RS, WADO-RS,
STOW-RS under ``/dicom-web``, DICOM PS3.18), and :meth:`Orthanc.stop` ends that process only:
never a system service or another Orthanc on the machine. :func:`orthanc_missing` says, in one
line, what to install where Orthanc or its plugin is absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from medray.cluster.local_serve import free_port
from medray.errors import ConfigError

__all__ = ["Orthanc", "orthanc_missing", "start_orthanc", "DICOMWEB_PLUGIN"]

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_INSTALL = "apt-get install -y orthanc orthanc-dicomweb (Debian; `make pacs` does it as root)"


def _binary() -> str | None:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")


def orthanc_missing() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed, else one line naming what to install."""
    if _binary() is None:
        return f"Orthanc is not installed: {_INSTALL}"
    if not DICOMWEB_PLUGIN.exists():
        return f"Orthanc's DICOMweb plugin ({DICOMWEB_PLUGIN}) is not installed: {_INSTALL}"
    return None


@dataclass
class Orthanc:
    """A running private Orthanc: its AE title, ports and the base URLs of its REST and DICOMweb APIs."""

    aet: str
    dicom_port: int
    http_port: int
    folder: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        """Orthanc's REST API."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS ``/studies``, WADO-RS, STOW-RS)."""
        return f"{self.url}/dicom-web"

    def stop(self, timeout_s: float = 10.0) -> None:
        """End this Orthanc process (SIGTERM, then SIGKILL after ``timeout_s``)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_orthanc(folder: str | Path, *, aet: str = "ORTHANC", timeout_s: float = 30.0) -> Orthanc:
    """Start a private Orthanc with its configuration, storage and logs under ``folder``, on free ports.

    It accepts C-STORE and C-ECHO from any AE title (a test archive: no authentication, listening on
    127.0.0.1 only). Raises ConfigError with :func:`orthanc_missing`'s line when it is not installed,
    or when it does not answer within ``timeout_s`` (its log's path in the message).
    """
    missing = orthanc_missing()
    if missing:
        raise ConfigError(missing)
    folder = Path(folder)
    (folder / "storage").mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "medray",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "SaveJobs": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.out"
    with log.open("wb") as out:
        process = subprocess.Popen([_binary() or "Orthanc", f"--logdir={folder}", str(folder / "orthanc.json")],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    orthanc = Orthanc(aet=aet, dicom_port=dicom_port, http_port=http_port, folder=folder, process=process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"Orthanc exited with code {process.returncode} at start: see {log}")
        try:
            if httpx.get(f"{orthanc.url}/system", timeout=1).status_code == 200:
                return orthanc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    orthanc.stop()
    raise ConfigError(f"Orthanc did not answer on port {http_port} within {timeout_s:.0f} s: see {log}")
