"""SPEC §2 Logger — levels, line format, [user], exceptions, destinations, threshold."""

import os
import pty
import re
import signal
import subprocess
import sys

from conftest import module

EVERY_LEVEL = module('''
    class Pool(Logger):
        log_id = "Postgresql::Pool class"

    class Unnamed(Logger):
        pass

    pool = Pool()
    for level in ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg"):
        getattr(pool, "log_system_" + level)(level + " line")
    Logger("Postgresql module").log_system_notice("ready")
    Logger("server").log_info("a user line")
    Unnamed().log_system_info("default id")
    try:
        {}["missing"]
    except KeyError as error:
        pool.log_system_error(error)

    @SystemCallbacks.on_reload
    def reloaded():
        pool.log_system_info("info after reload")
        pool.log_system_warn("warn after reload")
        record("reloaded")
''')


def run_check(daemon, **popen):
    return subprocess.run([sys.executable, "-m", "oversipd", "check", "-c", str(daemon.conf_path)],
                          env=daemon.environment(), **popen)


def test_lines_carry_level_log_id_and_user_mark(oversipd_daemon):
    daemon = oversipd_daemon(modules={"levels": EVERY_LEVEL}, start=False)
    stderr = run_check(daemon, capture_output=True, text=True).stderr
    for level in ("DEBUG", "INFO", "NOTICE", "WARN", "ERROR", "CRIT", "ALERT", "EMERG"):
        assert f"{level}: <Postgresql::Pool class> {level.lower()} line" in stderr
    assert "NOTICE: <Postgresql module> ready" in stderr
    assert "INFO: <server> [user] a user line" in stderr
    assert "INFO: <Unnamed> default id" in stderr
    assert "[master]" in stderr


def test_an_exception_renders_its_text_type_and_traceback(oversipd_daemon):
    daemon = oversipd_daemon(modules={"levels": EVERY_LEVEL}, start=False)
    stderr = run_check(daemon, capture_output=True, text=True).stderr
    assert "ERROR: <Postgresql::Pool class> 'missing' (KeyError)" in stderr
    assert "Traceback (most recent call last):" in stderr and "levels.py" in stderr


def test_nothing_below_log_level_is_written(oversipd_daemon):
    daemon = oversipd_daemon(modules={"levels": EVERY_LEVEL}, core={"log_level": "error"}, start=False)
    stderr = run_check(daemon, capture_output=True, text=True).stderr
    assert "warn line" not in stderr and "info line" not in stderr
    assert "ERROR: <Postgresql::Pool class> error line" in stderr and "EMERG:" in stderr


def test_the_threshold_follows_log_level_after_a_reload(oversipd_daemon):
    daemon = oversipd_daemon(modules={"levels": EVERY_LEVEL}, core={"log_level": "info"})
    daemon.core = {"log_level": "warn"}
    daemon.write_conf()
    daemon.signal(signal.SIGHUP)
    daemon.wait_events("reloaded")
    daemon.wait_log("warn after reload")
    assert "[worker 1] WARN: <Postgresql::Pool class> warn after reload" in daemon.log_text()
    assert "info after reload" not in daemon.log_text()
    assert daemon.stop() == 0


def test_under_the_journal_every_line_starts_with_its_priority(oversipd_daemon, tmp_path):
    daemon = oversipd_daemon(modules={"levels": EVERY_LEVEL}, start=False)
    journal = tmp_path / "journal-stream"
    with open(journal, "w") as stream:
        stat = os.fstat(stream.fileno())
        daemon.env = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        env = {**daemon.environment(), "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        subprocess.run([sys.executable, "-m", "oversipd", "check", "-c", str(daemon.conf_path)],
                       env=env, stderr=stream, stdout=subprocess.DEVNULL, check=True)
    lines = journal.read_text().splitlines()
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
    expected = {"debug": 7, "info": 6, "notice": 5, "warn": 4, "error": 3, "crit": 2, "alert": 1, "emerg": 0}
    for level, priority in expected.items():
        assert any(line.startswith(f"<{priority}>") and f"{level} line" in line for line in lines)


def test_a_stale_journal_stream_is_not_the_journal(oversipd_daemon):
    daemon = oversipd_daemon(modules={"levels": EVERY_LEVEL}, start=False)
    daemon.env = {"JOURNAL_STREAM": "1:1"}
    env = {**daemon.environment(), "JOURNAL_STREAM": "1:1"}
    result = subprocess.run([sys.executable, "-m", "oversipd", "check", "-c", str(daemon.conf_path)],
                            env=env, capture_output=True, text=True)
    assert not re.search(r"^<\d>", result.stderr, re.M)


def test_a_terminal_gets_colours(oversipd_daemon):
    daemon = oversipd_daemon(modules={"levels": EVERY_LEVEL}, start=False)
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "oversipd", "check", "-c", str(daemon.conf_path)],
                               env=daemon.environment(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        output += chunk
    process.wait(30)
    os.close(leader)
    assert b"\x1b[" in output and b"CRIT: <Postgresql::Pool class> crit line" in output
