"""make bench-overload (issue 22, SIP.md §15): one worker under ~3x its capacity of unique requests.

Over UDP and over TCP (--transport udp|tcp|both, default both).  Over TCP
each SIPp UAC keeps one connection (`-t t1`, like a trunk).  A connection
per call (`-t tn`, --transport tcp-per-call or all) is there to try, not
in the default: at thousands of calls/s it opens ~10^5 connections a
minute on one loopback address pair, where ephemeral ports and TIME_WAIT,
not the server, could become the limit.

oversipd: one worker on UDP and TCP with `[limits] max_transactions` and
`max_connections`, a fresh one for each transport's flood; its server
script answers OPTIONS 200 and INVITE 486 after ~SCRIPT_WORK_US of work (a
script does something per request).  First a short calibration: SIPp offers
OPTIONS at a ladder of rates, 3 s each; the highest the worker serves whole
(>= 97 % answered, no 503) is its capacity C.  Then two SIPp UACs offer unique OPTIONS and unique
INVITEs, 1.5 C each (3 C in all), for --duration seconds; afterwards a probe
measures how soon a request is accepted again.  The capacity is calibrated
once, over UDP, and the same rate is offered over both transports.

Kamailio (with --kamailio): Debian's, one UDP and one TCP worker, tm + pike
(bench/kamailio/overload.cfg, pike letting C requests/s through per source,
503 + Retry-After beyond, tcp_max_connections = --max-connections), shared
memory -m --kamailio-shm MB; the same flood at the same rate.

Reported per server: memory (oversipd: the worker's RSS; Kamailio: the PSS
of its processes summed, which counts its shared segment once, PITFALLS:
its RSS is not its memory), 503s and answers as SIPp received them
(-trace_counts), the accepted requests' response time p50/p99 (-trace_rtt,
accepted responses only), the requests SIPp could send (over TCP the
server's window holds SIPp back: the rest waits in SIPp), the kernel's drops
(UDP: RcvbufErrors; TCP: ListenDrops), and the first 200 after the flood.

Not in `make test`: it loads both cores for minutes.  Usage:
    .venv/bin/python bench/overload.py [--duration 60] [--transport udp|tcp|tcp-per-call|both|all]
                                       [--max-transactions 100000]
                                       [--max-connections 10000] [--kamailio]
"""

from __future__ import annotations

import argparse
import csv
import glob
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OPTIONS_UAC = HERE / "sipp" / "overload-options.xml"
INVITE_UAC = HERE / "sipp" / "overload-invite.xml"
KAMAILIO_CFG = HERE / "kamailio" / "overload.cfg"
SCRIPT_WORK_US = 150
SIPP_BUFFER = 4 * 1024 * 1024
CALIBRATION_LADDER = (1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000, 6000, 7000, 8000)
SAMPLE_PERIOD = 0.5
FLOODS = {   # --transport's names: (the protocol, SIPp's -t)
    "udp": ("udp", "u1"),            # one socket per SIPp UAC
    "tcp": ("tcp", "t1"),            # one connection per SIPp UAC, like a trunk
    "tcp-per-call": ("tcp", "tn"),   # a connection per call
}
KERNEL_DROPS = {"udp": ("Udp:", "RcvbufErrors"), "tcp": ("TcpExt:", "ListenDrops")}

SCRIPT = textwrap.dedent(f"""
    import time
    from oversipd import SipEvents

    def work():
        # what a real script spends per request (a lookup, some logic)
        end = time.perf_counter() + {SCRIPT_WORK_US} / 1e6
        while time.perf_counter() < end:
            pass

    @SipEvents.on_request
    def on_request(request):
        if request.sip_method == "ACK":
            return
        work()
        request.reply(200 if request.sip_method == "OPTIONS" else 486)
""")


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (each server listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def kernel_statistic(text: str, section: str, name: str) -> int:
    """One counter of /proc/net/snmp or /proc/net/netstat: a `Section: names` line, then `Section: values`."""
    rows = [line.split() for line in text.splitlines() if line.startswith(section)]
    return int(rows[1][rows[0].index(name)])


def kernel_drops(transport: str) -> int:
    """What the kernel dropped before the server read it: UDP datagrams, or TCP connections not accepted."""
    section, name = KERNEL_DROPS[transport]
    source = "/proc/net/snmp" if transport == "udp" else "/proc/net/netstat"
    return kernel_statistic(Path(source).read_text(), section, name)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: its private memory plus its share of what it shares (Kamailio's shm)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:   # it just exited
        return 0
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")), 0)


class Sampler(threading.Thread):
    """`measure()` every SAMPLE_PERIOD seconds; the largest value is what is reported."""

    def __init__(self, measure: Callable[[], int]) -> None:
        super().__init__(daemon=True)
        self.measure = measure
        self.samples: list[int] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                self.samples.append(self.measure())
            except OSError:
                pass
            time.sleep(SAMPLE_PERIOD)   # a sampling period, not a wait for an event

    def stop(self) -> int:
        self.running = False
        self.join()
        return max(self.samples, default=0)


# --- the servers -------------------------------------------------------------------

class Server(Protocol):
    """What a flood needs of a server: oversipd or Kamailio, listening on UDP and TCP at `port`."""
    label: str
    port: int

    def memory_kib(self) -> int: ...
    def memory_note(self) -> str: ...
    def counters(self) -> dict[str, int]: ...
    def stop(self) -> None: ...


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL after 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


class Oversipd:
    label = "oversipd"

    def __init__(self, directory: Path, port: int, max_transactions: int, max_connections: int) -> None:
        self.pid_file = directory / "o.pid"
        self.port = port
        (directory / "server.py").write_text(SCRIPT)
        (directory / "oversipd.conf").write_text(textwrap.dedent(f"""
            [core]
            workers = 1
            server_script = "server.py"
            modules_dir = ""
            pid_file = "{self.pid_file}"
            log_level = "warn"
            [listen.sip_udp]
            address = "udp://127.0.0.1:{port}"
            [listen.sip_tcp]
            address = "tcp://127.0.0.1:{port}"
            [sip]
            listen = ["sip_udp", "sip_tcp"]
            [limits]
            max_transactions = {max_transactions}
            max_connections = {max_connections}
        """))
        self.log = open(directory / "oversipd.log", "wb")
        self.process = subprocess.Popen([str(ROOT / ".venv" / "bin" / "oversipd"), "run", "-c",
                                         str(directory / "oversipd.conf")],
                                        stdout=self.log, stderr=subprocess.STDOUT, cwd=directory)
        self.worker = self.wait_worker()

    def wait_worker(self, timeout: float = 30.0) -> int:
        import psutil
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = psutil.Process(self.process.pid).children()
            if children and Path(str(self.pid_file) + ".sip").exists():
                return children[0].pid
            time.sleep(0.05)   # the process table has no event to wait on
        raise RuntimeError("the oversipd worker did not start")

    def counters(self) -> dict[str, int]:
        from oversipd.sip.counters import read_counters
        return (read_counters(self.pid_file) or {}).get(1, {})

    def memory_kib(self) -> int:
        return rss_kib(self.worker)

    def memory_note(self) -> str:
        return "worker RSS"

    def stop(self) -> None:
        stop_server(self.process)
        self.log.close()


class Kamailio:
    label = "Kamailio (tm + pike)"

    def __init__(self, directory: Path, port: int, density: int, shm_mb: int, max_connections: int) -> None:
        self.port = port
        self.shm_mb = shm_mb
        binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
        self.log = open(directory / "kamailio.log", "wb")
        self.process = subprocess.Popen(
            [binary, "-f", str(KAMAILIO_CFG), "-DD", "-E", "-Y", str(directory), "-P", str(directory / "k.pid"),
             "-w", str(directory), "-m", str(shm_mb), "-l", f"udp:127.0.0.1:{port}", "-l", f"tcp:127.0.0.1:{port}",
             "-A", f"DENSITY={density}", "-A", f"MAX_CONNECTIONS={max_connections}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=directory)
        if wait_answer(port, timeout=15) == float("inf"):
            self.stop()
            raise RuntimeError(f"Kamailio does not answer: see {directory / 'kamailio.log'}")

    def processes(self) -> list[int]:
        import psutil
        main = psutil.Process(self.process.pid)
        return [main.pid, *(child.pid for child in main.children(recursive=True))]

    def memory_kib(self) -> int:
        return sum(pss_kib(pid) for pid in self.processes())

    def memory_note(self) -> str:
        return f"PSS summed over its {len(self.processes())} processes (shm -m {self.shm_mb} MB)"

    def counters(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        stop_server(self.process)
        self.log.close()


# --- SIPp ---------------------------------------------------------------------------

def socket_limit(mode: str) -> list[str]:
    """SIPp refuses -t tn unless its socket limit (50 000 by default) is below its open-file limit."""
    if mode != "tn":
        return []
    return ["-max_socket", str(resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 100)]


def sipp(scenario: Path, mode: str, port: int, rate: int, calls: int, directory: Path,
         seconds: float) -> subprocess.Popen:
    """SIPp's UAC with `scenario` over `mode` (its -t: u1, t1, tn)."""
    command = ["sipp", "-sf", str(scenario), "-t", mode, "-i", "127.0.0.1", "-p", str(free_port()),
               "-r", str(rate), "-rp", "1000", "-m", str(calls), "-l", "500000", "-nostdin",
               "-buff_size", str(SIPP_BUFFER), "-trace_rtt", "-rtt_freq", "200",
               "-trace_counts", "-timeout", f"{seconds + 45:g}s", *socket_limit(mode), f"127.0.0.1:{port}"]
    return subprocess.Popen(command, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)


def stop_sipp(run: subprocess.Popen) -> None:
    """SIGUSR1 would wait for calls left in silence; the flood's end is now: SIGTERM, then its files are flushed."""
    run.terminate()
    try:
        run.wait(10)
    except subprocess.TimeoutExpired:
        run.kill()
        run.wait()


def response_times(directory: Path) -> list[float]:
    """Milliseconds of every accepted response (SIPp's *_rtt.csv: Date_ms;response_time_ms;rtd_no)."""
    times = []
    for path in glob.glob(str(directory / "*_rtt.csv")):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle, delimiter=";"):
                try:
                    times.append(float(row["response_time_ms"]))
                except (KeyError, TypeError, ValueError):
                    pass
    return times


def message_counts(directory: Path, direction: str) -> dict[str, int]:
    """{status or method: count} SIPp received ("Recv") or sent ("Sent"), summed over the runs'
    *_counts.csv (last line, columns `N_NAME_Recv` / `N_NAME_Sent`)."""
    totals: dict[str, int] = {}
    for path in glob.glob(str(directory / "*_counts.csv")):
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter=";"))
        if not rows:
            continue
        for column, value in rows[-1].items():
            parts = (column or "").split("_")
            if len(parts) == 3 and parts[2] == direction and (value or "").isdigit():
                totals[parts[1]] = totals.get(parts[1], 0) + int(value)
    return totals


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def options_bytes(port: int, local: int, transport: str = "udp") -> bytes:
    return (f"OPTIONS sip:127.0.0.1:{port};transport={transport} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport.upper()} 127.0.0.2:{local};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def answered_200(port: int, transport: str, wait: float) -> bool:
    """One unique OPTIONS from a fresh source port (a new connection over TCP): a 200 within `wait` s?"""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.2", 0))   # another source than the flood's (pike blocks per source)
        sock.settimeout(wait)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(options_bytes(port, sock.getsockname()[1], transport))
            received = b""
            while True:   # a datagram per read; a stream: responses until the 200 (or the wait ends)
                chunk = sock.recv(65535)
                if not chunk:
                    return False
                received = chunk if transport == "udp" else received + chunk
                if received.startswith(b"SIP/2.0 200") or b"\r\n\r\nSIP/2.0 200" in received:
                    return True
        except OSError:   # the wait ended, or the connection was refused or reset
            return False


def wait_answer(port: int, transport: str = "udp", timeout: float = 60.0) -> float:
    """Seconds until a unique OPTIONS (one every 50 ms) gets 200."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        attempt = time.monotonic()
        if answered_200(port, transport, wait=0.05):
            return time.monotonic() - start
        time.sleep(max(0.0, attempt + 0.05 - time.monotonic()))   # a refused probe returns at once: pace them
    return float("inf")


# --- the runs ------------------------------------------------------------------------

@dataclass
class Outcome:
    label: str
    transport: str
    memory_note: str
    memory_idle_mib: float
    memory_max_mib: float
    offered: int
    seconds: float
    statuses: dict[str, int]
    sent: int
    times: list[float]
    kernel_drops: int
    recovery_ms: float
    counters: dict[str, int] = field(default_factory=dict)

    def row(self) -> str:
        accepted = sum(count for status, count in self.statuses.items() if status in ("200", "486"))
        return (f"| {self.label} | {self.transport.upper()} | {self.memory_note} | {self.memory_idle_mib:.1f} MiB | "
                f"{self.memory_max_mib:.1f} MiB | {self.offered}/s for {self.seconds:.0f} s | {self.sent} | "
                f"{accepted} | {self.statuses.get('503', 0)} | {self.statuses.get('500', 0)} | "
                f"{percentile(self.times, 0.5):.0f} ms | {percentile(self.times, 0.99):.0f} ms | "
                f"{self.kernel_drops} | {self.recovery_ms:.0f} ms |")


HEADER = ("| server | transport | memory measured | idle | max during the flood | offered (unique OPTIONS + INVITE) | "
          "sent by SIPp | accepted (200, 486) | 503 | 500 | accepted p50 | accepted p99 | "
          "kernel drops (UDP RcvbufErrors, TCP ListenDrops) | first 200 after |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def flood(server: Server, transport: str, rate: int, duration: float, directory: Path) -> Outcome:
    protocol, mode = FLOODS[transport]
    idle = server.memory_kib()
    before = server.counters()
    drops = kernel_drops(protocol)
    sampler = Sampler(server.memory_kib)
    sampler.start()
    start = time.monotonic()
    runs = [sipp(scenario, mode, server.port, rate, int(rate * duration), directory, duration)
            for scenario in (OPTIONS_UAC, INVITE_UAC)]
    time.sleep(duration)   # the flood's length
    for run in runs:
        stop_sipp(run)
    seconds = time.monotonic() - start
    after = server.counters()
    recovery = wait_answer(server.port, protocol)
    peak = sampler.stop()
    sent = message_counts(directory, "Sent")
    return Outcome(server.label, transport, server.memory_note(), idle / 1024, peak / 1024, 2 * rate, seconds,
                   message_counts(directory, "Recv"), sent.get("OPTIONS", 0) + sent.get("INVITE", 0),
                   response_times(directory), kernel_drops(protocol) - drops, recovery * 1000,
                   {name: after.get(name, 0) - before.get(name, 0) for name in after})


def calibrate(daemon: Oversipd, directory: Path, step_seconds: float = 3.0) -> int:
    """The worker's capacity: the highest rate of a ladder it serves whole (>= 97 % answered, no 503).

    Offering far more instead would measure less: the worker would spend
    part of its time refusing (the standing-queue 503s).
    """
    capacity = CALIBRATION_LADDER[0]
    for rate in CALIBRATION_LADDER:
        before = daemon.counters()
        run = sipp(OPTIONS_UAC, "u1", daemon.port, rate, int(rate * step_seconds), directory, step_seconds)
        time.sleep(step_seconds + 0.5)   # the step, and its last answers
        stop_sipp(run)
        after = daemon.counters()
        answered = after.get("2xx", 0) - before.get("2xx", 0)
        refused = after.get("busy_503", 0) - before.get("busy_503", 0)
        if refused or answered < 0.97 * rate * step_seconds:
            break
        capacity = rate
    return capacity


def flood_each(name: str, start: Callable[[Path], Server], transports: tuple[str, ...], rate: int,
               args: argparse.Namespace, directory: Path) -> list[Outcome]:
    """The same flood over each transport in turn, each on a server started afresh (its idle
    memory is not the previous flood's) after a pause longer than Timer J (PITFALLS: an
    overloaded run poisons the next)."""
    outcomes = []
    for transport in transports:
        time.sleep(args.settle)   # the previous run's SIPp and kernel leftovers are gone
        run_directory = directory / f"{name}-{transport}"
        run_directory.mkdir()
        server = start(run_directory)
        try:
            outcomes.append(flood(server, transport, rate, args.duration, run_directory))
        finally:
            server.stop()
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--transport", choices=(*FLOODS, "both", "all"), default="both",
                        help="both: udp and tcp; all: also tcp-per-call")
    parser.add_argument("--max-transactions", type=int, default=100000)
    parser.add_argument("--max-connections", type=int, default=10000)
    parser.add_argument("--factor", type=float, default=3.0, help="offered load / capacity")
    parser.add_argument("--settle", type=float, default=33.0,
                        help="seconds between runs: longer than Timer J (PITFALLS: an overloaded run poisons the next)")
    parser.add_argument("--kamailio", action="store_true", help="also run Kamailio (tm + pike) under the same flood")
    parser.add_argument("--kamailio-shm", type=int, default=64, help="Kamailio's shared memory, MB")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        print("sipp is missing (Debian's sip-tester)", file=sys.stderr)
        return 2
    transports = {"both": ("udp", "tcp"), "all": tuple(FLOODS)}.get(args.transport, (args.transport,))
    directory = Path(tempfile.mkdtemp(prefix="ovs-overload-"))

    def oversipd(run_directory: Path) -> Oversipd:
        return Oversipd(run_directory, free_port(), args.max_transactions, args.max_connections)

    def kamailio(run_directory: Path) -> Kamailio:
        return Kamailio(run_directory, free_port(), density=2 * capacity, shm_mb=args.kamailio_shm,
                        max_connections=args.max_connections)

    (directory / "calibration").mkdir()
    daemon = oversipd(directory / "calibration")
    try:
        capacity = calibrate(daemon, directory / "calibration")
    finally:
        daemon.stop()
    rate = int(args.factor * capacity / 2)
    outcomes = flood_each("oversipd", oversipd, transports, rate, args, directory)
    if args.kamailio:
        outcomes += flood_each("kamailio", kamailio, transports, rate, args, directory)
    print(f"one worker each; oversipd: max_transactions {args.max_transactions}, max_connections "
          f"{args.max_connections}, script work {SCRIPT_WORK_US} µs/request; "
          f"Kamailio: pike {capacity} requests/s per source (2 s units); SIPp -t: " +
          ", ".join(f"{transport} {FLOODS[transport][1]}" for transport in transports))
    print(f"oversipd's capacity (calibration: the highest OPTIONS/s of a ladder served whole): {capacity}")
    print(HEADER)
    for outcome in outcomes:
        print(outcome.row())
    for outcome in outcomes:
        if outcome.counters:
            print(f"{outcome.label} over {outcome.transport.upper()}, counters during the flood: " +
                  ", ".join(f"{name} {value}" for name, value in outcome.counters.items() if value))
    print(f"files: {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
