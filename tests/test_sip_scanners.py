"""SIP.md §11, §15 against real attack tools: Debian's sipvicious (svmap, svwar, svcrack) and sipsak.

Every tool is pointed at 127.0.0.1 only, bounded in count and time (PITFALLS:
never SIPVicious' autotest, never --autogetip).  `make test` installs both
packages when missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import module
from sip_helpers import UdpClient, counters, sip_daemon, wait_counter

TOOL_TIMEOUT = 60

# Every user gets the same answer (what an authentication module must do: SIP.md §14).
UNIFORM = module('''
from oversipd import SipEvents

@SipEvents.on_request
def on_request(request):
    if request.sip_method == "ACK":
        return
    if request.sip_method == "OPTIONS":
        request.reply(200)
    else:
        request.reply(404)
''')

# The mistake svwar looks for: a known user (100) answered otherwise than an unknown one.
LEAKY = UNIFORM.replace("    else:\n        request.reply(404)",
                        "    elif request.ruri.user == '100' or request.to.uri.user == '100':\n"
                        "        request.reply(401, headers=[('WWW-Authenticate', 'Digest realm=\"x\", nonce=\"1\"')])\n"
                        "    else:\n        request.reply(404)")

# A registrar that never accepts a password: each attempt with credentials is a
# failed authentication reported through the admission control's hook.
NEVER_ACCEPTS = module('''
from oversipd import SipEvents
from oversipd.sip.core.limits import note_auth_failure

CHALLENGE = [("WWW-Authenticate", 'Digest realm="oversipd", nonce="abc", algorithm=MD5')]

@SipEvents.on_request
def on_request(request):
    if request.sip_method == "ACK":
        return
    if request.header("Authorization") is not None:
        record("attempt")
        note_auth_failure(request)
    request.reply(401, headers=CHALLENGE)
''')


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is missing: `make test` installs Debian's sipvicious and sipsak"
    return path


def run(command: list[str], cwd: Path, timeout: float = TOOL_TIMEOUT) -> str:
    """The tool's output; a tool still running after `timeout` is stopped there (bounded in time)."""
    # HOME: sipvicious keeps its sessions under ~/.sipvicious; keep them in the test's directory.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", cwd=cwd,
                               stdin=subprocess.DEVNULL, env={**os.environ, "HOME": str(cwd)})
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def svwar(server, tmp_path: Path) -> str:
    return run([tool("svwar"), "-e", "95-110", "-m", "INVITE", "-b", "127.0.0.1", "--maximumtime", "2",
                f"udp://127.0.0.1:{server.port}"], tmp_path)


def test_svwar_finds_a_user_a_script_gives_away(oversipd_daemon, tmp_path):
    """The control: svwar does find a user that is answered differently (so the next test can fail)."""
    output = svwar(sip_daemon(oversipd_daemon, script=LEAKY), tmp_path)
    assert "| 100 " in output or "100" in [line.split("|")[1].strip() for line in output.splitlines()
                                            if line.count("|") >= 2], output


def test_svwar_cannot_tell_users_apart(oversipd_daemon, tmp_path):
    output = svwar(sip_daemon(oversipd_daemon, script=UNIFORM), tmp_path)
    rows = [line for line in output.splitlines() if line.count("|") >= 2 and "Extension" not in line]
    assert not any(row.split("|")[1].strip().isdigit() for row in rows), output


def test_svmap_finds_the_server_and_it_stays_up(oversipd_daemon, tmp_path):
    server = sip_daemon(oversipd_daemon, script=UNIFORM)
    pids = server.daemon.worker_pids()
    output = run([tool("svmap"), "-b", "127.0.0.1", "-p", str(server.port), "127.0.0.1"], tmp_path)
    assert f"127.0.0.1:{server.port}" in output, output
    assert server.daemon.worker_pids() == pids


def test_svcrack_is_stopped_by_auth_failures(oversipd_daemon, tmp_path):
    pid_file = tmp_path / "o.pid"
    server = sip_daemon(oversipd_daemon, script=NEVER_ACCEPTS, core={"pid_file": str(pid_file)},
                        extra_tables={"limits": {"auth_failures": 5}})
    words = tmp_path / "words.txt"
    words.write_text("\n".join(f"secret{n}" for n in range(40)) + "\n")
    svcrack = subprocess.Popen([tool("svcrack"), "-u", "100", "-d", str(words), "-b", "127.0.0.1",
                                "-p", str(server.port), "127.0.0.1"], cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)},
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_counter(pid_file, "auth_403", 1, timeout=TOOL_TIMEOUT)   # svcrack meets the block
    finally:
        svcrack.kill()
        svcrack.wait()
    # Five failures block the source: the rest of the dictionary never reaches the script.
    assert len(server.daemon.wait_events("attempt", count=5)) == 5
    client = UdpClient(server)
    client.request("OPTIONS")
    assert client.response().status == 403


def worker_resources(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open descriptors) of a worker."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


# sipsak's random mode trashes up to -t characters of a request per round and
# stops at the first one that gets no answer (one we drop): several short runs.
RANDOM_RUNS = 15
FLOOD = ["-F", "-e", "3000"]
RANDOM = ["-R", "-t", "40", "--timer-t1", "20"]


@pytest.mark.parametrize("mode, runs", [(FLOOD, 1), (RANDOM, RANDOM_RUNS)], ids=["flood", "random"])
def test_sipsak_flood_and_random_junk_leave_the_worker_alive_and_flat(oversipd_daemon, tmp_path, mode, runs):
    pid_file = tmp_path / "o.pid"
    server = sip_daemon(oversipd_daemon, script=UNIFORM, core={"pid_file": str(pid_file)},
                        extra_tables={"limits": {"max_transactions": 1000}})
    (slot, pid), = server.daemon.worker_pids().items()
    client = UdpClient(server)
    client.request("OPTIONS")
    assert client.response().status == 200
    rss_before, fds_before = worker_resources(pid)
    for _ in range(runs):
        run([tool("sipsak"), *mode, "-s", f"sip:test@127.0.0.1:{server.port}", "-l", "0"], tmp_path)
    client.request("OPTIONS")
    answer = client.response()
    assert answer.status in (200, 503)   # served, or refused while the flood's transactions last
    assert counters(pid_file, "received") > (3000 if mode is FLOOD else 2 * RANDOM_RUNS)
    rss_after, fds_after = worker_resources(pid)
    assert server.daemon.worker_pids() == {slot: pid}
    assert fds_after == fds_before
    # Bounded by max_transactions (1000, about 1 KB each), not by what sipsak sent.
    assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)
