"""The server script for `make run`: a registrar with digest authentication, and calls between its users.

SIP.md §14: phones register (401 challenge, then 200), and a call to a
registered user forks to every phone the user registered; requests inside
a dialog follow the Record-Route we put in.  Users: `oversipd user add
NAME -c oversipd.conf`.  The edge proxy of OverSIP's kind is in examples/.
"""

from oversipd import Logger, SipEvents, SystemEvents
from oversipd.sip import Proxy, auth, registrar

log = Logger("server.py")
MAX_FORWARDS = 10


@SystemEvents.on_started
def started():
    log.log_info("registrar ready: `oversipd user add NAME -c oversipd.conf`, then register a phone")


@SipEvents.on_request
async def on_request(request):
    log.log_info(f"{request.sip_method} {request.ruri} from {request.source_ip}:{request.source_port} "
                 f"over {request.transport}")
    if not request.check_max_forwards(MAX_FORWARDS):
        return                                   # 483 already sent
    if request.loose_route() and (request.in_dialog or request.to_flow):
        # Inside a dialog, where our Record-Route says; or to a phone on a connection
        # of ours, sent by another node of the cluster (our Route named the phone's flow).
        # A Route to us that a phone preloads (its "outbound proxy") is just dropped.
        Proxy("proxy_to_users").route(request)
        return
    if request.sip_method == "ACK":
        return                                   # a stray ACK gets no response
    if request.sip_method == "CANCEL":
        request.reply(481)                       # no INVITE of ours to cancel (the core takes the others)
        return
    if request.in_dialog:
        request.reply(481)                       # a dialog that never went through us
        return
    if request.sip_method == "OPTIONS" and request.destination_myself():
        request.reply(200)                       # keep-alive pings of phones need no password
        return
    user = await auth.authenticate(request)      # None: 401/407 already sent
    if user is None:
        return
    if request.sip_method == "REGISTER":
        await registrar.save(request, user)      # 200 with the bindings, or 4xx
        return
    if not request.destination_myself():
        request.reply(403, "Relaying Denied")    # we call our own users only
        return
    bindings = await registrar.lookup(request.ruri)
    if not bindings:
        request.reply(480)
        return
    Proxy("proxy_to_users").route(request, targets=bindings)   # parallel forking
