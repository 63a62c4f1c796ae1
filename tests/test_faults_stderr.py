"""The master's stderr reader goes away (a closed terminal, a dead `| tee`): SPEC §5 says PIPE is ignored."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

from oversipd.testing import Daemon

MEASURE_SECONDS = 3.0


def test_a_vanished_stderr_reader_does_not_make_the_master_spin(tmp_path):
    tmp_path.chmod(0o755)
    daemon = Daemon(tmp_path, core={"workers": 1})
    process = subprocess.Popen([sys.executable, "-m", "oversipd", "run", "-c", str(daemon.conf_path)],
                               env=daemon.environment(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    daemon.process = process
    try:
        daemon.wait_ready()
        process.stderr.close()          # nobody reads the master's log any more
        process.send_signal(signal.SIGHUP)  # something to log: every write now raises SIGPIPE
        master = psutil.Process(process.pid)
        before = sum(master.cpu_times()[:2])
        time.sleep(MEASURE_SECONDS)     # a measurement window, not a wait for an event
        used = sum(master.cpu_times()[:2]) - before
        assert used < MEASURE_SECONDS / 3, f"the master used {used:.2f} s of CPU in {MEASURE_SECONDS:g} s"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        daemon.cleanup()
