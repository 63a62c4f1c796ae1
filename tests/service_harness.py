"""A real systemd, booted as PID 1 of private namespaces, for testing the oversipd unit.

`unshare` gives the boot its own pid, mount, uts, ipc, net and cgroup
namespaces.  Inside, a shell script builds a root filesystem: an overlay
whose lower layer is the host's `/` and whose upper layer is a tmpfs (so
nothing written inside reaches the host), with the staged `make install`
tree copied in, `/sys` and `/proc/sys` read-only (otherwise
systemd-sysctl would rewrite the host's kernel settings), private tmpfs on
`/dev`, `/run` and `/tmp`, and a host directory shared at SHARE_PATH.  It
then pivots into that root and execs systemd with `container=` set.

systemd tells us it finished booting over NOTIFY_SOCKET (as it tells any
container manager).  `nsenter --all` runs systemctl and journalctl inside.
`poweroff()` sends SIGRTMIN+4 (systemd's "poweroff" signal), waits for the
namespace to end and removes the cgroup the boot ran in.  Only processes
this harness started are ever signalled.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BOOT_TIMEOUT = 60.0
POWEROFF_TIMEOUT = 30.0
SYSTEMD = "/lib/systemd/systemd"
SHARE_PATH = "/srv/oversipd-test"       # the shared host directory, inside the container
BOOT_TARGET = "oversipd-test.target"
CGROUP_PREFIX = "oversipd-test-"
INSIDE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LESS": ""}
REPO = Path(__file__).resolve().parent.parent
_boots = itertools.count(1)
_stages: dict[tuple[str, ...], Path] = {}

TARGET_UNIT = """\
[Unit]
Description=oversipd test boot: basic.target and nothing else
Requires=basic.target
After=basic.target
AllowIsolate=yes
"""

# Runs as PID 1 of the new pid namespace, in the new mount namespace.
BOOT_SCRIPT = r"""
set -eu
base=$1 stage=$2 share=$3 console=$4
mount --make-rprivate /
mount -t tmpfs -o mode=0755 oversipd-test "$base"
mkdir "$base/upper" "$base/work" "$base/root"
cp -a "$stage/." "$base/upper/"
chmod 0755 "$base/upper"  # cp gave it the stage directory's mode: this is the new /
mkdir -p "$base/upper/etc/systemd/system" "$base/upper$SHARE_PATH"
printf '%s' "$TARGET_UNIT" > "$base/upper/etc/systemd/system/$BOOT_TARGET"
echo oversipd-test > "$base/upper/etc/hostname"
root=$base/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$root"
mount --bind "$share" "$root$SHARE_PATH"
mount -t proc proc "$root/proc"
mount --bind "$root/proc/sys" "$root/proc/sys"
mount -o remount,bind,ro "$root/proc/sys"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$root/sys/fs/cgroup"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
for node in null zero full random urandom tty; do
    touch "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
touch "$root/dev/console"
mount --bind "$console" "$root/dev/console"
mkdir "$root/dev/shm" "$root/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,nosuid,noexec devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
cd "$root"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
export container=oversipd-test
exec "$SYSTEMD" --system --unit="$BOOT_TARGET" --log-target=journal
"""


def make_install(destdir: Path, *make_vars: str, target: str = "install") -> subprocess.CompletedProcess[str]:
    """`make install DESTDIR=destdir VAR=...` (or another target) in the repository."""
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), target,
                           f"DESTDIR={destdir}", *make_vars],
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)


def staged_install(tmp_path_factory, *make_vars: str) -> Path:
    """A `make install DESTDIR=...` tree, made once per test session for these variables."""
    if make_vars not in _stages:
        destdir = tmp_path_factory.mktemp("stage")
        result = make_install(destdir, *make_vars)
        assert result.returncode == 0, f"make install failed:\n{result.stdout}{result.stderr}"
        _stages[make_vars] = destdir
    return _stages[make_vars]


def missing_tools() -> str | None:
    """Why a booted systemd cannot be had here, or None when it can."""
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root"
    for tool in ("unshare", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is not installed"
    if cgroup2_mount() is None:
        return "no cgroup2 hierarchy is mounted"
    return None


def cgroup2_mount() -> Path | None:
    """Where the cgroup2 (unified) hierarchy is mounted on the host."""
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype == "cgroup2":
                return Path(fields[4])
    return None


def remove_cgroup_tree(cgroup: Path) -> None:
    """rmdir a cgroup and its descendants, deepest first (only empty cgroups can go)."""
    for directory in sorted((p for p in cgroup.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True):
        directory.rmdir()
    cgroup.rmdir()


def _remove_abandoned_cgroups(parent: Path) -> None:
    """Empty cgroups left by a test run that was killed before its poweroff."""
    for cgroup in parent.glob(f"{CGROUP_PREFIX}*"):
        owner = cgroup.name[len(CGROUP_PREFIX):].split("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            try:
                remove_cgroup_tree(cgroup)
            except OSError:
                pass  # still has processes: not ours to touch


def own_cgroup2_path() -> str:
    with open("/proc/self/cgroup") as groups:
        for line in groups:
            if line.startswith("0::"):
                return line[3:].strip()
    return "/"


class BootedSystemd:
    """One systemd booted in private namespaces; `boot()`, `run(...)`, `poweroff()`."""

    def __init__(self, workdir: Path, stage: Path) -> None:
        self.workdir = Path(workdir)
        self.stage = Path(stage)
        self.share = self.workdir / "share"        # SHARE_PATH inside
        self.console = self.workdir / "console.log"
        self.cgroup: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.systemd_pid: int | None = None

    # --- boot and poweroff ------------------------------------------------------

    def boot(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Boot and return once systemd reported READY=1 (basic.target reached)."""
        self.share.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.share.chmod(0o755)
        self.console.touch()
        base = self.workdir / "base"
        base.mkdir()
        script = self.workdir / "boot.sh"
        script.write_text(BOOT_SCRIPT)
        notify_path = self.share / "boot-notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            self.cgroup = self._make_cgroup()
            env = {**INSIDE_ENV, "SHARE_PATH": SHARE_PATH, "BOOT_TARGET": BOOT_TARGET,
                   "TARGET_UNIT": TARGET_UNIT, "SYSTEMD": SYSTEMD,
                   "NOTIFY_SOCKET": f"{SHARE_PATH}/boot-notify"}
            # The shell joins the cgroup before unshare makes it the root of
            # the new cgroup namespace: everything systemd creates stays below.
            # Should this test process die, unshare gets SIGKILL (setpriv) and
            # takes PID 1 with it (--kill-child): no container outlives us.
            join_and_boot = ('echo $$ > "$0/cgroup.procs" && exec setpriv --pdeathsig KILL '
                             'unshare --pid --fork --kill-child --mount --uts --ipc --net --cgroup '
                             '/bin/sh "$@"')
            with open(self.workdir / "boot.log", "wb") as log:
                self.process = subprocess.Popen(
                    ["/bin/sh", "-c", join_and_boot, str(self.cgroup), str(script), str(base),
                     str(self.stage), str(self.share), str(self.console)],
                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            self._wait_ready(notify, timeout)
        self.systemd_pid = self._find_systemd()

    def _make_cgroup(self) -> Path:
        mount = cgroup2_mount()
        assert mount is not None
        parent = mount / own_cgroup2_path().lstrip("/")
        _remove_abandoned_cgroups(parent)
        cgroup = parent / f"{CGROUP_PREFIX}{os.getpid()}-{next(_boots)}"
        cgroup.mkdir()
        return cgroup

    def _wait_ready(self, notify: socket.socket, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"systemd did not finish booting within {timeout:g} s\n{self.diagnostics()}")
            notify.settimeout(min(remaining, 1.0))
            try:
                message = notify.recv(4096).decode(errors="replace").split("\n")
            except socket.timeout:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"the boot ended with status {self.process.returncode}\n"
                                       f"{self.diagnostics()}") from None
                continue
            if "READY=1" in message:
                return

    def _find_systemd(self) -> int:
        """The host pid of the container's PID 1: unshare's only child."""
        import psutil
        assert self.process is not None
        children = psutil.Process(self.process.pid).children()
        assert len(children) == 1, children
        return children[0].pid

    def poweroff(self, timeout: float = POWEROFF_TIMEOUT) -> None:
        """SIGRTMIN+4 to systemd, wait until the namespace is gone, remove the cgroup."""
        try:
            if self.process is not None and self.process.poll() is None:
                if self.systemd_pid is not None:
                    os.kill(self.systemd_pid, signal.SIGRTMIN + 4)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    # unshare --kill-child takes PID 1, and with it the whole
                    # pid namespace, down when unshare dies.
                    self.process.kill()
                    self.process.wait(timeout)
        finally:
            self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        if self.cgroup is not None and self.cgroup.exists():
            remove_cgroup_tree(self.cgroup)  # the pid namespace is gone: all empty
        self.cgroup = None

    # --- inside ---------------------------------------------------------------------

    def run(self, *argv: str, timeout: float = 60, check: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all of its namespaces and its root)."""
        assert self.systemd_pid is not None
        result = subprocess.run(["nsenter", "--target", str(self.systemd_pid), "--all", *argv],
                                env=INSIDE_ENV, capture_output=True, text=True, timeout=timeout,
                                input=input, stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited with {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = self.run("systemctl", "--no-pager", *args)
        if check and result.returncode != 0:
            tail = self.run("journalctl", "--no-pager", "-n", "60").stdout
            raise AssertionError(f"systemctl {' '.join(args)} exited with {result.returncode}:\n"
                                 f"{result.stdout}{result.stderr}\n--- the journal's last lines:\n{tail}")
        return result

    def write_file(self, path: str, text: str) -> None:
        """Write a file inside the container (into its tmpfs upper layer)."""
        self.run("sh", "-c", 'mkdir -p "$(dirname "$0")" && cat > "$0"', path, input=text, check=True)

    def unit_properties(self, unit: str, *names: str) -> dict[str, str]:
        shown = self.systemctl("show", unit, "-p", ",".join(names)).stdout
        return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)

    def wait_unit(self, unit: str, timeout: float = 30, **expected: str) -> dict[str, str]:
        """Wait until `systemctl show` gives the expected properties (e.g. ActiveState="active")."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.unit_properties(unit, *expected, "ActiveState", "SubState", "Result")
            if all(shown.get(k) == v for k, v in expected.items()):
                return shown
            if time.monotonic() > deadline:
                raise TimeoutError(f"{unit}: wanted {expected}, still {shown} after {timeout:g} s\n"
                                   f"{self.journal(unit)}")
            time.sleep(0.05)  # systemd offers no wait for a property; poll it briefly

    def journal(self, unit: str, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-u", unit, *args).stdout

    def diagnostics(self) -> str:
        texts = []
        for name in ("boot.log", "console.log"):
            path = self.workdir / name
            if path.exists():
                texts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(texts)
