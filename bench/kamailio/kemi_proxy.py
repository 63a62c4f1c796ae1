"""make bench-sip, Kamailio KEMI: bench/kamailio/proxy.cfg's request route in Python (app_python3)."""

import KSR


def mod_init():
    return Routes()


class Routes:
    def child_init(self, rank):
        return 0

    def ksr_request_route(self, msg):
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return 1
        if KSR.is_CANCEL():
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return 1
        if KSR.siputils.has_totag() > 0:
            if KSR.rr.loose_route() > 0:      # in-dialog: the Route set this proxy recorded
                KSR.tm.t_relay()
                return 1
            if KSR.is_ACK() and KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()              # hop-by-hop ACK of a non-2xx
                return 1
            KSR.sl.sl_send_reply(404, "Not Here")
            return 1
        if KSR.is_INVITE():
            KSR.rr.record_route()
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()
        return 1

    def ksr_reply_route(self, msg):
        return 1

    def ksr_onsend_route(self, msg):
        return 1
