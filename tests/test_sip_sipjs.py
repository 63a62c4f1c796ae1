"""SIP.md §12 with SIP.js (Node, `ws` as its WebSocket): registers over WS and WSS through oversipd to Kamailio.

The same exchange as JsSIP's (tests/test_sip_jssip.py, tests/js_helpers.py):
SIP.js (npm `sip.js`, pinned in tests/js/package-lock.json) registers, gets
a caller's MESSAGE by oversipd's Path, answers it and sends one back.
"""

from __future__ import annotations

import pytest

from js_helpers import kamailio, pki, register_and_exchange_messages   # noqa: F401 (fixtures)


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_sipjs_registers_and_exchanges_messages_through_kamailio(oversipd_daemon, pki, kamailio, scheme):
    register_and_exchange_messages(oversipd_daemon, pki, kamailio, "register_and_message.mjs", scheme)
