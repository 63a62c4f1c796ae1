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
