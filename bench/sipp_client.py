"""Running SIPp (Debian's sip-tester) against a server, and reading what it counted.

One run is one UAC at a fixed call rate for a fixed number of calls (and,
for a proxy, one UAS behind it), each with its statistics dumped to a CSV
file (-trace_stat); the figures come from the last line of those files.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = Path(__file__).resolve().parent / "sipp"
OPTIONS_UAC = SCENARIOS / "options-uac.xml"
PROXY_UAC = SCENARIOS / "proxy-uac.xml"
PROXY_UAS = SCENARIOS / "proxy-uas.xml"
HOST = "127.0.0.1"
# SIPp's own socket buffers default to 64 KB: at a few thousand messages/s the
# load generator, not the server, would drop datagrams.  The kernel caps this
# at net.core.rmem_max.
SIPP_BUFFER = 4 * 1024 * 1024
UAS_GRACE = 3.0           # seconds the UAS may take to end its calls after the UAC ended
SIPP_TIMEOUT_MARGIN = 15  # seconds beyond the run's length before a SIPp gives up (> a scenario's 10 s recv timeouts)


@dataclass
class SippCounts:
    """The totals of one SIPp process (its statistics file's last line)."""

    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    dead_call_messages: int = 0
    out_of_call_messages: int = 0
    call_rate: float = 0.0    # calls/s from its start to its last call's end, as SIPp saw it
    exit_status: int | None = None
    wall_seconds: float = 0.0  # from spawning SIPp to its exit

    @classmethod
    def read(cls, path: Path, exit_status: int | None, wall_seconds: float = 0.0) -> "SippCounts":
        try:
            with open(path, newline="", encoding="ascii", errors="replace") as stats:
                rows = list(csv.DictReader(stats, delimiter=";"))
        except OSError:
            rows = []
        if not rows:
            return cls(exit_status=exit_status, wall_seconds=wall_seconds)
        last = rows[-1]
        return cls(successful=int(last["SuccessfulCall(C)"]), failed=int(last["FailedCall(C)"]),
                   retransmissions=int(last["Retransmissions(C)"]),
                   dead_call_messages=int(last["DeadCallMsgs(C)"]),
                   out_of_call_messages=int(last["OutOfCallMsgs(C)"]),
                   call_rate=float(last["CallRate(C)"]), exit_status=exit_status, wall_seconds=wall_seconds)


# SIPp's -t: one socket for every call, or (udp-per-call) a UDP socket of its own per call, as
# many phones would come from many ports.
SIPP_TRANSPORTS = {"udp": "u1", "tcp": "t1", "udp-per-call": "un"}


def sipp_command(scenario: Path, transport: str, local_port: int, stats: Path, errors: Path) -> list[str]:
    # A socket per call: as many sockets as calls in flight (run_uac's -l), under the open-file limit.
    per_call = ["-max_socket", "16500"] if transport == "udp-per-call" else []
    return ["sipp", "-sf", str(scenario), "-t", SIPP_TRANSPORTS[transport], *per_call,
            "-i", HOST, "-p", str(local_port), "-nostdin", "-buff_size", str(SIPP_BUFFER),
            "-trace_stat", "-stf", str(stats), "-fd", "1", "-trace_err", "-error_file", str(errors)]


def run_uac(scenario: Path, transport: str, local_port: int, target: str, rate: float, calls: int,
            rundir: Path, send_to: str | None = None, options: tuple[str, ...] = ()) -> SippCounts:
    """Place `calls` calls at `rate` calls/s to `target` (host:port), via `send_to` if given;
    `options`: more SIPp options (an injection file, -key)."""
    # Calls in flight, beyond which SIPp would slow its rate down: room for a
    # few seconds of backlog, under SIPp's open-file limit (20000 here).
    limit = min(16000, max(1000, int(rate * 4)))
    command = sipp_command(scenario, transport, local_port, rundir / "uac.csv", rundir / "uac-errors.log")
    command += ["-r", f"{rate:g}", "-m", str(calls), "-l", str(limit),
                "-timeout", f"{calls / rate + SIPP_TIMEOUT_MARGIN:.0f}s", "-timeout_error"]
    if send_to:
        command += ["-rsa", send_to]
    command += [*options, target]
    began = time.monotonic()
    with open(rundir / "uac.out", "wb") as out:
        # In the run's directory: a SIPp that stops at its start writes its files where it runs.
        status = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=rundir,
                                timeout=calls / rate + 2 * SIPP_TIMEOUT_MARGIN).returncode
    return SippCounts.read(rundir / "uac.csv", status, time.monotonic() - began)


class Uas:
    """A SIPp UAS for the proxy scenario, started before the UAC, ended after it."""

    def __init__(self, transport: str, port: int, calls: int, rundir: Path) -> None:
        self.rundir = rundir
        command = sipp_command(PROXY_UAS, transport, port, rundir / "uas.csv", rundir / "uas-errors.log")
        command += ["-m", str(calls)]
        self.out = open(rundir / "uas.out", "wb")
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self.out,
                                        stderr=subprocess.STDOUT, cwd=rundir)

    def running(self) -> bool:
        return self.process.poll() is None

    def end(self) -> None:
        """Stop it now, whatever it was doing (the run is abandoned)."""
        if self.running():
            self.process.kill()
            self.process.wait()
        self.out.close()

    def finish(self) -> SippCounts:
        """Wait for the UAS to end its calls; a UAS still waiting for calls that never came is ended."""
        try:
            status: int | None = self.process.wait(UAS_GRACE)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            status = None
        self.out.close()
        return SippCounts.read(self.rundir / "uas.csv", status)


def udp_rcvbuf_errors() -> int:
    """RcvbufErrors of the Udp line of /proc/net/snmp: datagrams dropped on a full receive buffer,
    machine-wide (every socket, whoever owns it)."""
    with open("/proc/net/snmp", encoding="ascii") as snmp:
        udp = [line.split() for line in snmp if line.startswith("Udp:")]
    names, values = udp[0], udp[1]
    return int(values[names.index("RcvbufErrors")])
