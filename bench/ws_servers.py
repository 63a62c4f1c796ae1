"""The servers of `make bench-ws`: bench/sip_servers.py's Kamailio and oversipd with WS, WSS and TLS listeners.

Each server takes three loopback ports: `port` (UDP for the readiness probe
that bench/sip_servers.py sends, and WS), `port + 1` (WSS) and `port + 2`
(SIP over TLS), and one certificate both share (ECDSA P-256, made by
`make_certificate`).  Memory is read per process (RSS and PSS, psutil) and,
for Kamailio, its shared memory in use (`kamcmd core.shmmem`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil

from .sip_servers import BENCH, HOST, Kamailio, Oversipd

KAMAILIO_WS_CONFIG = BENCH / "kamailio" / "ws.cfg"
OVERSIPD_WS_CONF_TEMPLATE = BENCH / "oversipd-ws.conf"
OVERSIPD_WS_SCRIPT = BENCH / "oversipd_ws.py"
PKG_MB = 64     # Kamailio's private memory per process (Debian's default is 8 MB)
CERTIFICATE_KIND = "ECDSA P-256 (prime256v1), self-signed for 127.0.0.1"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 and its key, for both servers."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "30", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    key.chmod(0o644)   # both servers may run as another user than the harness; the key is a throwaway
    return cert, key


class WsUrls:
    """Where a server of this bench listens."""

    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    @property
    def wss_url(self) -> str:
        return f"wss://{HOST}:{self.port + 1}"

    @property
    def tls_url(self) -> str:
        return f"tls://{HOST}:{self.port + 2}"

    def memory(self) -> dict[str, int]:
        """RSS and PSS (bytes) summed over the server's processes: PSS counts a shared page once."""
        rss = pss = 0
        for process in self.processes():   # type: ignore[attr-defined]
            try:
                info = process.memory_full_info()
            except psutil.Error:
                continue
            rss, pss = rss + info.rss, pss + info.pss
        return {"rss": rss, "pss": pss}

    def open_files_limit(self) -> int:
        """The smallest soft descriptor limit among the server's processes."""
        limits = []
        for process in self.processes():   # type: ignore[attr-defined]
            try:
                limits.append(process.rlimit(psutil.RLIMIT_NOFILE)[0])
            except psutil.Error:
                pass
        return min(limits, default=0)


class KamailioWs(WsUrls, Kamailio):
    """Kamailio with bench/kamailio/ws.cfg: 2 TCP children serve WS, WSS and TLS."""

    def __init__(self, name: str, port: int, workdir: Path, certificate: tuple[Path, Path],
                 allocator: str = "") -> None:
        super().__init__(name, "ws", port, workdir, allocator, pkg_mb=PKG_MB)
        self.certificate = certificate

    @property
    def ctl_socket(self) -> Path:
        return self.workdir / "kamailio-ctl.sock"

    def prepare(self) -> None:
        cert, key = self.certificate
        (self.workdir / "tls.cfg").write_text(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
            f"private_key = {key}\ncertificate = {cert}\n\n"
            "[client:default]\nverify_certificate = no\nrequire_certificate = no\n")
        config = KAMAILIO_WS_CONFIG.read_text().replace("@TLS_CFG@", str(self.workdir / "tls.cfg"))
        (self.workdir / "kamailio.cfg").write_text(config.replace("@CTL@", str(self.ctl_socket)))

    def config(self) -> Path:
        return self.workdir / "kamailio.cfg"

    def command(self) -> list[str]:
        return super().command() + ["-l", f"tcp:{HOST}:{self.port}", "-l", f"tls:{HOST}:{self.port + 1}",
                                    "-l", f"tls:{HOST}:{self.port + 2}"]

    def shared_memory_used(self) -> int | None:
        """`kamcmd core.shmmem`'s real_used (bytes): the shared memory Kamailio has in use."""
        try:
            output = subprocess.run(["kamcmd", "-s", f"unix:{self.ctl_socket}", "core.shmmem"],
                                    capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        for line in output.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "real_used":
                return int(value.strip())
        return None


class OversipdWs(WsUrls, Oversipd):
    """oversipd with bench/oversipd-ws.conf and bench/oversipd_ws.py."""

    def __init__(self, name: str, port: int, workdir: Path, binary: Path, workers: int,
                 certificate: tuple[Path, Path]) -> None:
        super().__init__(name, "ws", port, workdir, binary, workers, OVERSIPD_WS_SCRIPT, OVERSIPD_WS_CONF_TEMPLATE)
        self.certificate = certificate

    def prepare(self) -> None:
        super().prepare()
        conf = self.workdir / "oversipd.conf"
        cert, key = self.certificate
        text = conf.read_text()
        for token, value in (("@WSS_PORT@", str(self.port + 1)), ("@TLS_PORT@", str(self.port + 2)),
                             ("@CERT@", str(cert)), ("@KEY@", str(key))):
            text = text.replace(token, value)
        conf.write_text(text)
        for suffix in ("", "-wal", "-shm"):   # a fresh location per start, as Kamailio's
            (self.workdir / f"location.db{suffix}").unlink(missing_ok=True)

    def shared_memory_used(self) -> int | None:
        return None
