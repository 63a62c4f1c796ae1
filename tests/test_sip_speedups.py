"""Issue 10 — the optional C scanner (oversipd/sip/syntax/_speedups.c) and its pure-Python fallback.

The scanner must give exactly what the Python one gives on any input, and the
message-layer tests must pass without it (OVERSIPD_SIP_PURE_PYTHON=1, as on a
machine where it could not be built).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
import rfc4475  # noqa: E402

from oversipd.sip.syntax import message  # noqa: E402

speedups = pytest.importorskip("oversipd.sip.syntax._speedups", reason="the C scanner was not built")
ARGS = (message._KNOWN_NAMES, message._COMPACT, message._CHECKED)
REAL = [rfc4475.load(name) for name in rfc4475.names()]
PIECES = [b"\r\n", b"\r\n\r\n", b"\r\n ", b"\r\n\t", b":", b" ", b"\t", b"\r", b"\n", b"Via",
          b"v", b"From", b"t", b"Call-ID", b"CSeq", b"l", b"Content-Length", b"VIA ", b"X-Y",
          b"\xff", b"\xc3\xbc", b"\xe2\x82", b"INVITE sip:a@b SIP/2.0", b"SIP/2.0 200 OK", b"1"]


def test_parse_message_uses_the_c_scanner_here():
    assert message._scan is speedups.scan


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES) | st.binary(max_size=6), max_size=30).map(b"".join)
       | st.sampled_from(REAL) | st.binary(max_size=200))
def test_the_c_scanner_gives_what_the_python_one_gives(data):
    assert speedups.scan(data, *ARGS) == message._scan_python(data, *ARGS)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(REAL), st.integers(0, 2000), st.binary(max_size=4))
def test_the_scanners_agree_on_edited_real_messages(data, at, insert):
    at %= len(data) + 1
    data = data[:at] + insert + data[at:]
    assert speedups.scan(data, *ARGS) == message._scan_python(data, *ARGS)


def test_the_message_tests_pass_in_pure_python():
    pure = {**os.environ, "OVERSIPD_SIP_PURE_PYTHON": "1"}
    subprocess.run([sys.executable, "-c", "from oversipd.sip.syntax import message;"
                    "assert message._scan is message._scan_python"], env=pure, check=True)
    tests = Path(__file__).parent
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *(str(tests / name) for name in ("test_sip_message.py", "test_sip_torture.py",
                                          "test_sip_framing.py", "test_sip_hypothesis.py"))],
        env=pure, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


# --- the syntax layer compiled by Cython (issue 21) ------------------------------------

def imported_files(tree: Path, env: dict | None = None) -> list[str]:
    """Where `uri` and `message` come from when oversipd is imported from `tree`."""
    code = ("from oversipd.sip.syntax import uri, message, compiled;"
            "print(uri.__file__); print(message.__file__); print(compiled(uri), compiled(message))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(tree), **(env or {})})
    return result.stdout.split("\n")[:3]


SYNTAX = Path(message.__file__).parent
COMPILED = [path for path in SYNTAX.iterdir() if path.suffix == ".so" and path.name.split(".")[0] in ("uri", "message")]


@pytest.mark.skipif(len(COMPILED) < 2, reason="uri and message were not compiled (no Cython at build time)")
def test_uri_and_message_run_compiled_here_and_as_source_when_asked():
    tree = SYNTAX.parent.parent.parent
    uri_file, message_file, flags = imported_files(tree)
    assert uri_file.endswith(".so") and message_file.endswith(".so") and flags == "True True"
    uri_file, message_file, flags = imported_files(tree, {"OVERSIPD_SIP_PURE_PYTHON": "1"})
    assert uri_file.endswith("uri.py") and message_file.endswith("message.py") and flags == "False False"


@pytest.mark.skipif(len(COMPILED) < 2, reason="uri and message were not compiled (no Cython at build time)")
def test_a_source_edited_after_its_build_runs_as_source_not_as_the_old_compiled_code(tmp_path):
    import shutil
    shutil.copytree(SYNTAX.parent.parent.parent / "oversipd", tmp_path / "oversipd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    edited = tmp_path / "oversipd" / "sip" / "syntax" / "uri.py"
    later = max(path.stat().st_mtime for path in (tmp_path / "oversipd" / "sip" / "syntax").iterdir()) + 10
    os.utime(edited, (later, later))
    uri_file, message_file, flags = imported_files(tmp_path)
    assert uri_file == str(edited) and message_file.endswith(".so") and flags == "False True"
