"""make bench-sip: oversipd's server script for the OPTIONS table.

OPTIONS → 200, as Kamailio's bench/kamailio/options.cfg does with
sl_send_reply; an ACK gets nothing; anything else → 501.  Nothing else is checked, so the
figure is oversipd's own path: receive, parse, transaction, handler,
serialise, send.
"""

from oversipd import SipEvents


@SipEvents.on_request
def on_request(request):
    if request.sip_method == "OPTIONS":
        request.reply(200)
    elif request.sip_method != "ACK":
        request.reply(501)
