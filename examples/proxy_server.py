"""A server script that routes like OverSIP's default one, in Python (SIP.md §9-§10).

Every request from a client: Max-Forwards capped, NAT helped (rport,
received), in-dialog requests routed by their Route set, initial requests
checked and sent on through [proxy.proxy_out] (to their Request-URI, or
wherever its DNS leads).  Needs [proxy.proxy_out] and [proxy.proxy_in_dialog]
tables in oversipd.conf, for instance:

    [proxy.proxy_out]
    do_record_routing = true

    [proxy.proxy_in_dialog]
    do_record_routing = true
"""

from oversipd import Logger, SipEvents
from oversipd.sip import Proxy

log = Logger("proxy_server.py")

MAX_FORWARDS = 10
PROXIED_INITIAL = ("INVITE", "MESSAGE", "OPTIONS", "SUBSCRIBE", "REFER", "REGISTER")


@SipEvents.on_request
def on_request(request):
    log.log_info(f"{request.sip_method} {request.ruri} from {request.source_ip}:{request.source_port} "
                 f"over {request.transport}")
    if not request.check_max_forwards(MAX_FORWARDS):
        return                      # 483 already sent
    request.fix_nat()               # we assume clients: answer where they sent from
    if request.in_dialog:
        route_in_dialog(request)
    else:
        route_initial(request)


def route_in_dialog(request):
    """A request inside a dialog we record-routed comes with our Route on top."""
    if request.loose_route():
        Proxy("proxy_in_dialog").route(request)
    elif request.sip_method != "ACK":
        request.reply(403, "In-Dialog Request Without Our Route")
    # else: an ACK that was not routed through us: dropped


def route_initial(request):
    if request.headers("route") and not request.loose_route():
        if request.sip_method != "ACK":
            request.reply(403, "Pre-loaded Route Not Allowed")
        return
    if request.sip_method == "ACK":
        return                      # an initial ACK belongs to no call of ours
    if request.sip_method == "OPTIONS" and request.destination_myself():
        request.reply(200)          # a keep-alive or monitoring probe for us
        return
    if request.sip_method not in PROXIED_INITIAL:
        request.reply(501)
        return
    proxy = Proxy("proxy_out")
    proxy.on_provisional_response(lambda response: log.log_debug(f"{response.status} {response.reason}"))
    proxy.on_success_response(lambda response: log.log_info(f"{request.sip_method} {response.status}"))
    proxy.on_failure_response(lambda response: log.log_info(f"{request.sip_method} {response.status}"))
    proxy.on_canceled(lambda cancel: log.log_info(f"{request.call_id}: cancelled"))
    proxy.on_invite_timeout(lambda: log.log_notice(f"{request.call_id}: no final response in time"))
    proxy.on_error(lambda status, reason: log.log_notice(f"{request.call_id}: {status} {reason}"))
    proxy.route(request)
