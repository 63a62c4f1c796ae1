"""make bench-sip, Kamailio KEMI: bench/kamailio/options.cfg's request route in Python (app_python3)."""

import KSR


def mod_init():
    return Routes()


class Routes:
    def child_init(self, rank):
        return 0

    def ksr_request_route(self, msg):
        if KSR.is_OPTIONS():
            KSR.sl.sl_send_reply(200, "OK")
        else:
            KSR.sl.sl_send_reply(501, "Not Implemented")
        return 1

    def ksr_reply_route(self, msg):
        return 1

    def ksr_onsend_route(self, msg):
        return 1
