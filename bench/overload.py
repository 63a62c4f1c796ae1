"""make bench-overload (issue 22, SIP.md §15): one worker under ~3x its capacity of unique requests.

One oversipd worker serves UDP with `[limits] max_transactions`; its server
script answers OPTIONS 200 and INVITE 486 after ~SCRIPT_WORK_US of work (a
script does something per request).  First a short calibration: SIPp offers
far more than the worker can take and the worker's answered requests per
second are its capacity C.  Then two SIPp UACs offer unique OPTIONS and
unique INVITEs, 1.5 C each (3 C in all), for --duration seconds; afterwards
a probe measures how soon a request is accepted again.  Reported: the
worker's RSS (max, sampled), 503s sent, the accepted requests' response time
p50/p99 (SIPp's -trace_rtt, accepted responses only), the kernel's UDP
receive-buffer drops, and the recovery.

Not in `make test`: it loads both cores for over a minute.  Usage:
    .venv/bin/python bench/overload.py [--duration 60] [--max-transactions 20000]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OPTIONS_UAC = HERE / "sipp" / "overload-options.xml"
INVITE_UAC = HERE / "sipp" / "overload-invite.xml"
SCRIPT_WORK_US = 150
SIPP_BUFFER = 4 * 1024 * 1024

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
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return udp.getsockname()[1]


def rcvbuf_errors() -> int:
    lines = Path("/proc/net/snmp").read_text().splitlines()
    udp = [line.split() for line in lines if line.startswith("Udp:")]
    return int(udp[1][udp[0].index("RcvbufErrors")])


class Daemon:
    def __init__(self, directory: Path, port: int, max_transactions: int) -> None:
        self.directory = directory
        self.pid_file = directory / "o.pid"
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
            [sip]
            listen = ["sip_udp"]
            [limits]
            max_transactions = {max_transactions}
        """))
        oversipd = ROOT / ".venv" / "bin" / "oversipd"
        self.log = open(directory / "oversipd.log", "wb")
        self.process = subprocess.Popen([str(oversipd), "run", "-c", str(directory / "oversipd.conf")],
                                        stdout=self.log, stderr=subprocess.STDOUT, cwd=directory)
        self.port = port

    def worker_pid(self, timeout: float = 30.0) -> int:
        import psutil
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = psutil.Process(self.process.pid).children()
            if children and Path(str(self.pid_file) + ".sip").exists():
                return children[0].pid
            time.sleep(0.05)
        raise RuntimeError("the worker did not start")

    def counters(self) -> dict[str, int]:
        from oversipd.sip.counters import read_counters
        rows = read_counters(self.pid_file) or {}
        return rows.get(1, {})

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[int] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            self.samples.append(rss_kib(self.pid))
            time.sleep(0.2)   # a sampling period, not a wait for an event


def sipp(scenario: Path, port: int, rate: int, calls: int, directory: Path, seconds: float) -> subprocess.Popen:
    command = ["sipp", "-sf", str(scenario), "-t", "u1", "-i", "127.0.0.1", "-p", str(free_port()),
               "-r", str(rate), "-rp", "1000", "-m", str(calls), "-l", "500000", "-nostdin",
               "-buff_size", str(SIPP_BUFFER), "-trace_rtt", "-rtt_freq", "200",
               "-timeout", f"{seconds + 45:g}s", "-max_recv_loops", "100000", f"127.0.0.1:{port}"]
    return subprocess.Popen(command, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)


def response_times(directory: Path) -> list[float]:
    """Milliseconds of every accepted response (SIPp's *_rtt.csv: date;dateMs;rtd_no;response time)."""
    times = []
    for path in glob.glob(str(directory / "*_rtt.csv")):
        for line in Path(path).read_text().splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 3:
                try:
                    times.append(float(parts[2]))
                except ValueError:
                    pass
    return times


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def probe_until_accepted(port: int, timeout: float = 60.0) -> float:
    """Seconds until a unique OPTIONS gets 200 again (one every 50 ms)."""
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        local = sock.getsockname()[1]
        while time.monotonic() - start < timeout:
            data = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                    f"From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1:{port}>\r\n"
                    f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                    "Content-Length: 0\r\n\r\n").encode()
            sock.sendto(data, ("127.0.0.1", port))
            try:
                while True:
                    reply, _ = sock.recvfrom(65535)
                    if reply.startswith(b"SIP/2.0 200"):
                        return time.monotonic() - start
            except socket.timeout:
                continue
    return float("inf")


def calibrate(daemon: Daemon, directory: Path, seconds: float = 4.0) -> int:
    """Answered requests per second while SIPp offers far more: the worker's capacity."""
    before = daemon.counters()
    run = sipp(OPTIONS_UAC, daemon.port, 10000, int(10000 * seconds), directory, seconds)
    start = time.monotonic()
    time.sleep(seconds)   # the calibration window (a duration, not a wait for an event)
    after = daemon.counters()
    elapsed = time.monotonic() - start
    run.kill()
    run.wait()
    answered = (after.get("2xx", 0) - before.get("2xx", 0)) + (after.get("4xx", 0) - before.get("4xx", 0))
    return max(1, int(answered / elapsed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--max-transactions", type=int, default=20000)
    parser.add_argument("--settle", type=float, default=33.0, help="seconds between calibration and flood (> Timer J)")
    parser.add_argument("--factor", type=float, default=3.0, help="offered load / capacity")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        print("sipp is missing (Debian's sip-tester)", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="ovs-overload-"))
    calibration_dir = directory / "calibration"
    flood_dir = directory / "flood"
    calibration_dir.mkdir()
    flood_dir.mkdir()
    port = free_port()
    daemon = Daemon(directory, port, args.max_transactions)
    try:
        worker = daemon.worker_pid()
        idle_rss = rss_kib(worker)
        capacity = calibrate(daemon, calibration_dir)
        # Transactions of the calibration would count against the flood: let Timer J end them.
        time.sleep(args.settle)   # Timer J (32 s) must run out (PITFALLS: an overloaded run poisons the next)
        rate = int(args.factor * capacity / 2)
        before = daemon.counters()
        drops_before = rcvbuf_errors()
        sampler = RssSampler(worker)
        sampler.start()
        flood_start = time.monotonic()
        runs = [sipp(scenario, port, rate, int(rate * args.duration), flood_dir, args.duration)
                for scenario in (OPTIONS_UAC, INVITE_UAC)]
        time.sleep(args.duration)   # the flood's length
        for run in runs:
            run.kill()   # calls still waiting (silence, retransmissions) are not the flood's
            run.wait()
        flood_seconds = time.monotonic() - flood_start
        after = daemon.counters()
        recovery = probe_until_accepted(port)
        sampler.running = False
        sampler.join()
        drops = rcvbuf_errors() - drops_before
        times = response_times(flood_dir)
        delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
        rss_after = rss_kib(worker)
        print(f"overload: 1 worker, max_transactions {args.max_transactions}, script work {SCRIPT_WORK_US} µs/request")
        print(f"capacity (calibration, answered/s): {capacity}")
        print(f"offered: {2 * rate}/s unique requests ({rate} OPTIONS/s + {rate} INVITE/s) for {flood_seconds:.0f} s")
        print("| RSS idle | RSS max during flood | RSS after | received | answered 2xx+4xx | 503 busy | "
              "accepted p50 | accepted p99 | RcvbufErrors | first 200 after the flood |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {idle_rss / 1024:.1f} MiB | {max(sampler.samples) / 1024:.1f} MiB | {rss_after / 1024:.1f} MiB | "
              f"{delta.get('received', 0)} | {delta.get('2xx', 0) + delta.get('4xx', 0)} | {delta.get('busy_503', 0)} | "
              f"{percentile(times, 0.5):.1f} ms | {percentile(times, 0.99):.1f} ms | {drops} | {recovery * 1000:.0f} ms |")
        print(f"accepted responses with a response time: {len(times)}; mean {statistics.fmean(times) if times else 0:.1f} ms")
        print(f"files: {directory}")
    finally:
        daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
