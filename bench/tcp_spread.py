"""How TCP work spreads over oversipd's workers (issue 23): accepted connections, and one trunk's calls.

    python -m bench.tcp_spread [--tree DIR ...] [--clients 1000] [--rate 300] [--seconds 10]

For each source tree (default: this one; DIR's oversipd is imported through
PYTHONPATH, so a checkout of an older commit is the "before"), a 2-worker
oversipd on bench/oversipd-sip-proxy.conf with examples/proxy_server.py:
1. `--clients` TCP connections opened at once: how many each worker holds;
2. a SIPp UAC over one TCP connection -> oversipd -> a SIPp UAS over one TCP
   connection, `--rate` calls/s for `--seconds`: each worker's share of the
   daemon's CPU time (/proc/PID/schedstat), and the CPU µs per SIP message.
Not a speed figure (the run is at a fixed rate): the split is the result.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .sip_servers import OVERSIPD_PROXY_CONF_TEMPLATE, OVERSIPD_PROXY_SCRIPT, HOST, Oversipd
from .sipp_client import PROXY_UAC, Uas, run_uac

MESSAGES_PER_CALL = 6   # INVITE, 180, 200, ACK, BYE, 200 received by the proxy
PORT = 23100
UAS_PORT, UAC_PORT = 23110, 23120


class TreeOversipd(Oversipd):
    """oversipd imported from a given source tree."""

    def __init__(self, tree: Path, workdir: Path, workers: int) -> None:
        super().__init__(f"oversipd ({tree})", "proxy", PORT, workdir, Path(sys.executable).parent / "oversipd",
                         workers, OVERSIPD_PROXY_SCRIPT, OVERSIPD_PROXY_CONF_TEMPLATE)
        self.tree = tree

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.tree)}

    def workers_by_pid(self) -> list[psutil.Process]:
        return [p for p in self.processes() if p.pid != self.process.pid]


def held_by_workers(server: TreeOversipd) -> list[int]:
    return sorted((sum(1 for c in worker.net_connections("tcp")
                       if c.laddr and c.laddr.port == PORT and c.status == psutil.CONN_ESTABLISHED)
                   for worker in server.workers_by_pid()), reverse=True)


def accept_spread(server: TreeOversipd, clients: int) -> list[int]:
    sockets = [socket.create_connection((HOST, PORT)) for _ in range(clients)]
    try:
        deadline = time.monotonic() + 10
        while sum(held := held_by_workers(server)) < clients and time.monotonic() < deadline:
            time.sleep(0.05)
        return held
    finally:
        for sock in sockets:
            sock.close()


def trunk_split(server: TreeOversipd, rate: float, seconds: float, rundir: Path) -> tuple[list[float], float, str]:
    calls = round(rate * seconds)
    uas = Uas("tcp", UAS_PORT, calls, rundir)
    time.sleep(0.5)   # SIPp binds its port (a bench, not a test: no event to wait on)
    before = {w.pid: w.cpu_times() for w in server.workers_by_pid()}
    uac = run_uac(PROXY_UAC, "tcp", UAC_PORT, f"{HOST}:{UAS_PORT}", rate, calls, rundir, f"{HOST}:{PORT}")
    after = {w.pid: w.cpu_times() for w in server.workers_by_pid()}
    uas.finish()
    spent = [sum(after[pid][:2]) - sum(before[pid][:2]) for pid in after if pid in before]
    total = sum(spent)
    shares = sorted((s / total for s in spent), reverse=True) if total else []
    messages = uac.successful * MESSAGES_PER_CALL
    verdict = f"{uac.successful}/{calls} calls, {uac.failed} failed"
    return shares, (total * 1e6 / messages if messages else float("nan")), verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="an oversipd source tree (repeatable)")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    trees = args.tree or [Path(__file__).resolve().parent.parent]
    print(f"| tree | connections held per worker ({args.clients} at once) | trunk: workers' shares of CPU "
          f"| CPU µs/msg | calls |")
    print("|---|---|---|---|---|")
    for tree in trees:
        with tempfile.TemporaryDirectory(prefix="tcp-spread-") as workdir:
            server = TreeOversipd(tree.resolve(), Path(workdir) / "server", 2)
            server.start()
            try:
                held = accept_spread(server, args.clients)
                rundir = Path(workdir) / "run"
                rundir.mkdir()
                shares, cpu, verdict = trunk_split(server, args.rate, args.seconds, rundir)
            finally:
                server.stop()
        print(f"| {tree} | {' / '.join(map(str, held))} | {' / '.join(f'{s:.0%}' for s in shares)} "
              f"| {cpu:.1f} | {verdict} |")


if __name__ == "__main__":
    main()
