"""Bad input generated with hypothesis: configuration files and command lines (SPEC §3, §4).

A configuration is either accepted (`check` exits 0) or refused with exit
status 2 and one line naming the file and the key: never a traceback, and
no module imported.  A command line argparse rejects exits 2 with usage.
`oversipd check` runs in-process (`oversipd.cli.main`) so that hundreds of
examples stay cheap; each call is isolated from the next.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import math
import string
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st

import oversipd
from oversipd import cli
from oversipd.settings import CORE_KEYS, LOG_LEVELS, MAX_WORKERS, SYSLOG_FACILITIES

EXAMPLES = 300
PATH_KEYS = ("modules_dir", "server_script", "pid_file")
IMPORT_MARKER = "imported"
SERVER_SCRIPT = f"open(__file__.rsplit('/', 1)[0] + '/{IMPORT_MARKER}', 'a').write('server script\\n')\n"
PROBE_MODULE = ("import os\nopen(os.path.join(os.path.dirname(os.path.dirname(__file__)), "
                f"'{IMPORT_MARKER}'), 'a').write('module\\n')\n")
COMMON_SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --- TOML text for any value tomllib can return ---------------------------------------

def toml_string(text: str) -> str:
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_document(document: dict[str, object]) -> str:
    """Top-level `key = value` lines: tables as inline tables, which is still any TOML document."""
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in document.items())


PLAUSIBLE_STRINGS = st.sampled_from(["", "auto", "AUTO", "root", "nobody", "nogroup", "daemon",
                                     "local7", "modules.d", "server.py", "x.pid", *LOG_LEVELS])
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-3, max_value=1100),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    PLAUSIBLE_STRINGS,
    st.text(max_size=12),
    st.datetimes(min_value=datetime.datetime(1, 1, 1), timezones=st.none() | st.just(datetime.timezone.utc)),
    st.dates(),
    st.times(),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
# Valid values too, so that whole tables are accepted often enough to matter.
GOOD_TIMEOUTS = st.floats(min_value=0, max_value=1e12) | st.integers(min_value=0, max_value=100)
GOOD_VALUES = {
    "workers": st.integers(min_value=1, max_value=MAX_WORKERS) | st.just("auto"),
    "modules_dir": st.sampled_from(["modules.d", ""]),
    "server_script": st.sampled_from(["server.py", ""]),
    "pid_file": st.sampled_from(["", "x.pid"]) | st.text(string.ascii_letters, min_size=1, max_size=8),
    "user": st.sampled_from(["", "root"]),
    "group": st.sampled_from(["", "root"]),
    "log_level": st.sampled_from([*LOG_LEVELS, *(level.upper() for level in LOG_LEVELS)]),
    "syslog_facility": st.sampled_from(SYSLOG_FACILITIES),
    "graceful_timeout": GOOD_TIMEOUTS,
    "worker_timeout": GOOD_TIMEOUTS,
    "respawn_limit": st.integers(min_value=0, max_value=1000),
}
assert set(GOOD_VALUES) == set(CORE_KEYS), "a [core] key without valid values here"
core_items = st.sampled_from(sorted(CORE_KEYS)).flatmap(
    lambda key: st.tuples(st.just(key), GOOD_VALUES[key] | GOOD_VALUES[key] | values))
core_tables = st.lists(core_items, min_size=1, max_size=5).map(dict)
documents = st.dictionaries(
    st.sampled_from(["core", "modules", "listen", "Core", "core.x"]) | st.text(max_size=8),
    values | core_tables | st.dictionaries(st.text(max_size=6), st.dictionaries(st.text(max_size=4), values)),
    max_size=4)


# --- one isolated, in-process `oversipd check` ------------------------------------------

@pytest.fixture(scope="module")
def conf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bad-input")
    directory.chmod(0o755)
    (directory / "modules.d").mkdir(mode=0o755)
    (directory / "modules.d" / "probe_mod.py").write_text(PROBE_MODULE)
    (directory / "server.py").write_text(SERVER_SCRIPT)
    return directory


@contextlib.contextmanager
def isolated_process_state():
    """Undo what a `check` leaves behind in this process: logging, config, imported modules."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    namespace_path = list(oversipd.modules.__path__)
    modules_before = set(sys.modules)
    config = oversipd.config
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        oversipd.modules.__path__[:] = namespace_path
        for name in set(sys.modules) - modules_before:
            del sys.modules[name]
        oversipd.config = config


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `oversipd ARGV`, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with isolated_process_state(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as exit_:  # argparse
            status = exit_.code if isinstance(exit_.code, int) else 1
    return status, out.getvalue(), err.getvalue()


def check(conf_dir: Path, text: str | bytes) -> tuple[int, str, str, bool]:
    """Write the configuration, run `check`; also say whether any module was imported."""
    conf = conf_dir / "oversipd.conf"
    conf.write_bytes(text if isinstance(text, bytes) else text.encode())
    marker = conf_dir / IMPORT_MARKER
    marker.unlink(missing_ok=True)
    status, out, err = run_cli(["check", "-c", str(conf)])
    event(f"check exit status {status}")
    return status, out, err, marker.exists()


def assert_accepted_or_one_line(conf_dir: Path, status: int, out: str, err: str, imported: bool) -> str:
    """Accepted (0) or refused (2) with one line naming the file; returns the line."""
    assert "Traceback" not in out + err
    if status == 0:
        assert "configuration OK" in out
        return ""
    assert status == 2, f"exit status {status}: {err}"
    assert not imported, "a module was imported from a refused configuration"
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith("oversipd: ") and str(conf_dir) in err, err
    return err


# --- the properties ----------------------------------------------------------------------------

@COMMON_SETTINGS
@given(core=core_tables)
def test_random_values_for_every_core_key(conf_dir, core):
    for key in PATH_KEYS:  # keep generated paths inside the test directory
        value = core.get(key)
        assume(not isinstance(value, str) or not (value.startswith(("/", "~")) or ".." in value))
    status, out, err, imported = check(conf_dir, toml_document({"core": core}))
    line = assert_accepted_or_one_line(conf_dir, status, out, err, imported)
    if status == 2:
        assert any(f"core.{key}" in line for key in core), f"no [core] key named: {line}"


@COMMON_SETTINGS
@given(document=documents)
def test_random_toml_documents(conf_dir, document):
    core = document.get("core")
    if isinstance(core, dict):
        for key in PATH_KEYS:
            value = core.get(key)
            assume(not isinstance(value, str) or not (value.startswith(("/", "~")) or ".." in value))
    status, out, err, imported = check(conf_dir, toml_document(document))
    assert_accepted_or_one_line(conf_dir, status, out, err, imported)


@COMMON_SETTINGS
@given(text=st.binary(max_size=200) | st.text(max_size=200)
       | st.lists(st.sampled_from(["[core]", "[modules.x]", "[[core]]", "workers = 2", "workers =",
                                   'log_level = "debug"', "x = 1", "= 1", "[", "]", '"', "\x00"]),
                  max_size=6).map("\n".join))
def test_random_bytes_as_a_configuration(conf_dir, text):
    status, out, err, imported = check(conf_dir, text)
    assert_accepted_or_one_line(conf_dir, status, out, err, imported)


# --- command lines -------------------------------------------------------------------------------

MISSING_CONF = "/nonexistent/oversipd.conf"
VOCABULARY = ["run", "check", "-c", MISSING_CONF, "--conf", "-w", "--workers", "2", "auto", "0",
              "--modules-dir", "--pid-file", "/nonexistent/x.pid", "--log-level", "info", "loud",
              "-d", "--daemonize", "--insecure-modules", "reload", "stop", "status", "--", "-"]
unknown_options = st.text(alphabet=string.ascii_letters + string.digits + "-=_", max_size=8).map(lambda s: "--zz" + s)


@COMMON_SETTINGS
@given(words=st.lists(st.sampled_from(VOCABULARY), max_size=6), bad=unknown_options, where=st.integers(0, 6))
def test_random_command_lines_exit_2_with_usage(words, bad, where):
    argv = [*words[:where], bad, *words[where:]]
    assume("--" not in argv[:argv.index(bad)])  # after "--" the bad word is a positional
    status, out, err = run_cli(argv)
    assert status == 2, (argv, status, out, err)
    assert err.startswith("usage: oversipd"), (argv, err)
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["run", "-c", MISSING_CONF, "-w", "0"],
                                  ["run", "-c", MISSING_CONF, "-w", "many"],
                                  ["run", "-c", MISSING_CONF, "--log-level", "loud"],
                                  ["check", "-c", MISSING_CONF]])
def test_bad_option_values_exit_2(argv):
    status, out, err = run_cli(argv)
    assert status == 2
    assert err.startswith("usage: oversipd") or (err.count("\n") == 1 and err.startswith("oversipd: ")), err
