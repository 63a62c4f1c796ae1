"""SIP.md §12 with real WebRTC-side software: JsSIP (Node) registers over WS and WSS through oversipd to Kamailio.

JsSIP (npm, pinned in tests/js/package-lock.json, installed by `make test`)
registers over a WebSocket to oversipd, which proxies the REGISTER over UDP
to a Kamailio registrar that keeps oversipd's Path.  A caller's MESSAGE to
the user goes to Kamailio, which routes it by that Path back through
oversipd and over the WebSocket to JsSIP; JsSIP answers it and sends a
MESSAGE back to the caller through oversipd (tests/js_helpers.py).
"""

from __future__ import annotations

import pytest

from js_helpers import kamailio, pki, register_and_exchange_messages   # noqa: F401 (fixtures)


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_jssip_registers_and_exchanges_messages_through_kamailio(oversipd_daemon, pki, kamailio, scheme):
    register_and_exchange_messages(oversipd_daemon, pki, kamailio, "register_and_message.js", scheme)
