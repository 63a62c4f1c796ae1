"""The server script of `make bench-ws` (bench/ws.py): a registrar without authentication that relays to its users.

Kamailio's side (bench/kamailio/ws.cfg) is the same: OPTIONS to us get 200,
REGISTER is saved (oversipd: the [registrar] SQLite store that the workers
share; Kamailio: usrloc in shared memory), anything else is routed
statefully to the bindings of its Request-URI, 480 when there are none.
"""

from oversipd import SipEvents
from oversipd.sip import Proxy, registrar


@SipEvents.on_request
async def on_request(request):
    if request.sip_method == "OPTIONS" and not request.ruri.user and request.destination_myself():
        request.reply(200)
        return
    if request.sip_method == "REGISTER":
        await registrar.save(request)
        return
    bindings = await registrar.lookup(request.ruri)
    if not bindings:
        request.reply(480)
        return
    Proxy("to_users").route(request, targets=bindings)
