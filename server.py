"""The server script for `make run`: the single SystemEvents handlers and SipEvents.on_request."""

from oversipd import Logger, SipEvents, SystemEvents, module_settings

log = Logger("server.py")


@SystemEvents.on_initialize
def configure_modules():
    log.log_info(f"on_initialize (master, before the fork); example settings: {module_settings('example')}")


@SystemEvents.on_started
def started():
    log.log_info("SystemEvents.on_started")


@SystemEvents.on_user_reload
def user_reload():
    log.log_notice("SystemEvents.on_user_reload (SIGUSR1)")


@SystemEvents.on_terminated
def terminated(error):
    log.log_info(f"SystemEvents.on_terminated(error={error})")


# In the spirit of OverSIP's default server script: we are no registrar
# and no proxy yet, so OPTIONS to us gets 200, a request for someone else
# 404, and a method we do not implement 501.
MAX_FORWARDS = 10
HANDLED_HERE = ("OPTIONS",)


@SipEvents.on_request
def on_request(request):
    log.log_info(f"{request.sip_method} {request.ruri} from {request.source_ip}:{request.source_port} "
                 f"over {request.transport}")
    if request.sip_method == "ACK":
        return  # an ACK gets no response
    if not request.check_max_forwards(MAX_FORWARDS):
        return  # 483 already sent
    if not request.destination_myself():
        request.reply(404, "Not Here")
    elif request.sip_method in HANDLED_HERE:
        request.reply(200)
    else:
        request.reply(501)
