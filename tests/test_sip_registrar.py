"""SIP.md §14 — registrar, location store, digest authentication, parallel forking: `make run`'s server.py.

The daemon runs the repository's own server.py (the script of `make run`)
with [registrar] and [auth] on SQLite or on a private PostgreSQL (the same
tests, parametrised).  Peers are real: SIPp (MD5 digest, calls, callees
that answer, refuse or ring), and Python clients that compute SHA-256
digests and keep a TCP connection as a registered phone.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import sqlite3
import subprocess
import time
import tomllib
import uuid

import pytest

from oversipd.sip import digest
from registrar_helpers import (PASSWORDS, REPO, Baresip, SipPhone, authorization, bound_contacts, challenges, registrar_daemon,
                               user_command)
from sip_helpers import SIPP, SIPP_DIR, run_sipp
from listen_helpers import free_port
from test_mod_postgresql import postgres  # noqa: F401  the private PostgreSQL of oversip-mod-postgresql's tests

STORES = ["sqlite", "postgresql"]


@pytest.fixture
def store_url(request):
    """A fresh store: a SQLite file in the daemon's directory, or a new database on the private PostgreSQL."""
    if request.param == "sqlite":
        return "sqlite:location.db"
    return new_database(request.getfixturevalue("postgres"))


def new_database(server) -> str:
    import psycopg
    name = f"t{uuid.uuid4().hex[:12]}"
    info = server.conninfo()
    with psycopg.connect(**info, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"postgresql://{info['user']}@/{name}?host={info['host']}&port={info['port']}"


def parametrised_stores(test):
    return pytest.mark.parametrize("store_url", STORES, indirect=True)(test)


@pytest.fixture
def sqlite_server(oversipd_daemon):
    return registrar_daemon(oversipd_daemon, "sqlite:location.db")


# --- registration --------------------------------------------------------------------------------

@parametrised_stores
def test_register_is_challenged_sha256_first_then_bound_and_listed(oversipd_daemon, store_url):
    server = registrar_daemon(oversipd_daemon, store_url)
    phone = SipPhone(server, "alice")
    challenged = phone.register(f"Contact: {phone.contact()}")
    assert challenged.status == 401
    assert [c["algorithm"] for c in challenges(challenged)] == ["SHA-256", "MD5"]
    assert all(c["qop"] == "auth" and c["realm"] == "oversipd" for c in challenges(challenged))
    for algorithm in ("SHA-256", "MD5"):
        ok = phone.authenticated_register(f"Contact: {phone.contact()}", "Expires: 600", algorithm=algorithm)
        assert ok.status == 200, ok.to_bytes()
        assert bound_contacts(ok) == {phone.contact()[1:-1]: 600}
    second = SipPhone(server, "alice")
    ok = second.authenticated_register(f"Contact: {second.contact(';expires=300')}")
    assert bound_contacts(ok) == {phone.contact()[1:-1]: pytest.approx(600, abs=2),
                                  second.contact()[1:-1]: pytest.approx(300, abs=2)}


def test_a_register_with_a_preloaded_route_to_us_is_handled_here(sqlite_server):
    phone = SipPhone(sqlite_server, "alice")   # a phone whose "outbound proxy" is this server
    route = f"Route: <sip:{sqlite_server.host}:{sqlite_server.port};lr>"
    ok = phone.authenticated_register(route, f"Contact: {phone.contact()}")
    assert ok.status == 200 and list(bound_contacts(ok)) == [phone.contact()[1:-1]]
    assert ok.headers("Path") == [], "the REGISTER went round through ourselves as a proxy"


def test_wrong_password_and_unknown_user_get_the_same_answer(sqlite_server):
    answers = []
    for user, password in (("alice", "wrong"), ("mallory", "anything")):
        phone = SipPhone(sqlite_server, user, password=password)
        response = phone.authenticated_register(f"Contact: {phone.contact()}")
        answers.append((response.status, response.reason,
                        [sorted(c) for c in challenges(response)], "stale" in str(response.to_bytes())))
    assert answers[0] == answers[1] == (401, "Unauthorized", answers[0][2], False)


def test_a_source_guessing_passwords_gets_403_once_it_reached_auth_failures(oversipd_daemon):
    """SIP.md §15 `auth_failures`: wrong passwords (or unknown users) from one IP, then 403 for a minute."""
    server = registrar_daemon(oversipd_daemon, "sqlite:location.db", workers=1, limits={"auth_failures": 3})
    guesser = SipPhone(server, "alice", password="wrong")
    for _ in range(3):
        assert guesser.authenticated_register(f"Contact: {guesser.contact()}").status == 401
    assert guesser.register(f"Contact: {guesser.contact()}").status == 403   # not even challenged
    right = SipPhone(server, "alice")   # the right password from that IP: refused too, for the minute
    assert right.register(f"Contact: {right.contact()}").status == 403


def test_an_expired_nonce_with_the_right_password_gets_stale_true(sqlite_server):
    phone = SipPhone(sqlite_server, "alice")
    challenge = challenges(phone.register(f"Contact: {phone.contact()}"))[0]
    # A nonce made 10 minutes ago by any node: the key every node derives from the store's secret.
    with sqlite3.connect(sqlite_server.daemon.directory / "location.db") as db:
        secret = db.execute("SELECT value FROM secrets WHERE name = 'digest nonce'").fetchone()[0]
    key = hmac.new(bytes.fromhex(secret), b"oversipd", hashlib.sha256).digest()
    old = {**challenge, "nonce": digest.Nonces(key, 300).make(now=time.time() - 600)}
    response = phone.register(f"Contact: {phone.contact()}", authorization_header=authorization(
        "REGISTER", phone.uri, "alice", PASSWORDS["alice"], old))
    assert response.status == 401
    assert all(c.get("stale") == "true" for c in challenges(response))
    forged = {**challenge, "nonce": old["nonce"][:-4] + "AAAA"}
    response = phone.register(f"Contact: {phone.contact()}", authorization_header=authorization(
        "REGISTER", phone.uri, "alice", PASSWORDS["alice"], forged))
    assert response.status == 401 and "stale" not in str(response.to_bytes())


@parametrised_stores
def test_contact_star_with_expires_0_removes_every_binding(oversipd_daemon, store_url):
    server = registrar_daemon(oversipd_daemon, store_url)
    phone = SipPhone(server, "bob")
    other = SipPhone(server, "bob")
    phone.authenticated_register(f"Contact: {phone.contact()}")
    assert len(bound_contacts(other.authenticated_register(f"Contact: {other.contact()}"))) == 2
    assert phone.authenticated_register("Contact: *").status == 400       # no Expires: 0
    removed = phone.authenticated_register("Contact: *", "Expires: 0")
    assert removed.status == 200 and bound_contacts(removed) == {}
    assert bound_contacts(phone.authenticated_register()) == {}           # a query lists nothing


@parametrised_stores
def test_expires_below_min_gets_423_above_max_is_lowered_and_a_binding_expires_by_itself(oversipd_daemon, store_url):
    server = registrar_daemon(oversipd_daemon, store_url, registrar={"min_expires": 2, "max_expires": 900,
                                                                                  "default_expires": 900})
    phone = SipPhone(server, "alice")
    brief = phone.authenticated_register(f"Contact: {phone.contact()}", "Expires: 1")
    assert (brief.status, brief.header("Min-Expires")) == (423, "2")
    long = phone.authenticated_register(f"Contact: {phone.contact(';expires=100000')}")
    assert list(bound_contacts(long).values()) == [900]
    other = SipPhone(server, "alice")
    short = other.authenticated_register(f"Contact: {other.contact()}", "Expires: 2")
    assert len(bound_contacts(short)) == 2
    deadline = time.monotonic() + 10
    while len(bound_contacts(phone.authenticated_register())) == 2:   # until the store lets it go
        assert time.monotonic() < deadline, "the 2-second binding never expired"
    assert list(bound_contacts(phone.authenticated_register())) == [phone.contact()[1:-1]]


def test_bindings_are_read_while_another_process_writes_and_an_expired_one_is_deleted_on_read(sqlite_server):
    phone = SipPhone(sqlite_server, "alice")
    phone.authenticated_register(f"Contact: {phone.contact()}")
    database = sqlite3.connect(sqlite_server.daemon.directory / "location.db", isolation_level=None)
    try:
        database.execute("INSERT INTO bindings SELECT aor, 'sip:gone@192.0.2.1', 'sip:gone@192.0.2.1', 1.0, "
                         "call_id, cseq, path, instance, reg_id, q FROM bindings")   # expired in 1970
        assert list(bound_contacts(phone.authenticated_register())) == [phone.contact()[1:-1]]
        assert database.execute("SELECT count(*) FROM bindings WHERE expires <= 1.0").fetchone() == (0,)
        # Another process holds the write lock: a read of the bindings does not wait for it
        # (busy_timeout would end in a 503), as a lookup takes no write lock when nothing expired.
        database.execute("BEGIN IMMEDIATE")
        listed = phone.authenticated_register()
        database.execute("ROLLBACK")
    finally:
        database.close()
    assert (listed.status, list(bound_contacts(listed))) == (200, [phone.contact()[1:-1]])


def test_a_register_meeting_another_process_s_write_lock_waits_for_it_while_the_worker_serves_on(sqlite_server):
    """A worker writes in its reactor only when the write lock is free at once; else its store's thread waits."""
    phone = SipPhone(sqlite_server, "alice")
    phone.authenticated_register(f"Contact: {phone.contact()}")   # the file, its tables, the worker's writer
    database = sqlite3.connect(sqlite_server.daemon.directory / "location.db", isolation_level=None)
    try:
        database.execute("BEGIN IMMEDIATE")
        challenge = challenges(phone.register(f"Contact: {phone.contact(';expires=120')}"))[0]
        phone.cseq += 1
        phone.send_request("REGISTER", phone.uri, f"Contact: {phone.contact(';expires=120')}",
                           "Authorization: " + authorization("REGISTER", phone.uri, phone.user, phone.password,
                                                             challenge),
                           cseq=phone.cseq, to=f"<sip:alice@{phone.domain}>")
        # From the same address, so to the same worker: answered while that REGISTER waits for the lock.
        phone.send_request("OPTIONS", phone.uri, cseq=1, to=f"<{phone.uri}>", call_id=uuid.uuid4().hex)
        meanwhile = phone.response()
        database.execute("ROLLBACK")
    finally:
        database.close()
    assert (meanwhile.status, meanwhile.cseq_method) == (200, "OPTIONS")
    registered = phone.response()
    assert (registered.status, registered.cseq_method) == (200, "REGISTER")
    # Stored as the lock came free (a reactor that had waited on it would answer 2 s later: 118).
    assert list(bound_contacts(registered).values()) in ([120], [119])


@parametrised_stores
def test_a_register_older_than_the_binding_in_its_call_id_is_refused(oversipd_daemon, store_url):
    server = registrar_daemon(oversipd_daemon, store_url)
    phone = SipPhone(server, "alice")
    assert phone.authenticated_register(f"Contact: {phone.contact()}", cseq=10).status == 200
    stale = phone.authenticated_register(f"Contact: {phone.contact()}", "Expires: 0", cseq=3)
    assert stale.status == 500
    other_call = phone.authenticated_register(f"Contact: {phone.contact()}", "Expires: 0", cseq=1,
                                              call_id=uuid.uuid4().hex)
    assert other_call.status == 200 and bound_contacts(other_call) == {}


def test_max_contacts_and_outbound_instances_replace_their_own_binding(oversipd_daemon):
    server = registrar_daemon(oversipd_daemon, "sqlite:location.db", registrar={"max_contacts": 2})
    phone = SipPhone(server, "alice", transport="tcp")
    instance = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'
    first = phone.authenticated_register(f"Contact: {phone.contact(';ob;' + instance)}", "Supported: outbound")
    assert first.status == 200 and first.header("Require") == "outbound"
    # The same instance and reg-id from a new connection: its binding is replaced, not added.
    again = SipPhone(server, "alice", transport="tcp")
    replaced = again.authenticated_register(f"Contact: {again.contact(';ob;' + instance)}", "Supported: outbound")
    assert list(bound_contacts(replaced)) == [again.contact()[1:-1]]
    third = SipPhone(server, "alice")
    assert len(bound_contacts(third.authenticated_register(f"Contact: {third.contact()}"))) == 2
    fourth = SipPhone(server, "alice")
    refused = fourth.authenticated_register(f"Contact: {fourth.contact()}")
    assert refused.status == 403


def test_a_reload_applies_new_registrar_settings(oversipd_daemon):
    server = registrar_daemon(oversipd_daemon, "sqlite:location.db", registrar={"max_contacts": 1})
    first, second = SipPhone(server, "alice"), SipPhone(server, "alice")
    assert first.authenticated_register(f"Contact: {first.contact()}").status == 200
    assert second.authenticated_register(f"Contact: {second.contact()}").status == 403
    server.daemon.extra_tables["registrar"]["max_contacts"] = 2
    server.daemon.write_conf()
    server.daemon.reload()
    for _ in range(4):   # whichever worker takes it
        assert second.authenticated_register(f"Contact: {second.contact()}").status == 200


BAD_REGISTERS = [
    ("Contact: <sip:alice@127.0.0.1:5>;expires=soon",), ("Contact: <sip:alice@127.0.0.1:5>", "Expires: -5"),
    ("Contact: <sip:alice@127.0.0.1:5>;q=2",), ("Contact: *", "Contact: <sip:alice@127.0.0.1:5>", "Expires: 0"),
    ("Contact: <sip:alice@127.0.0.1:5>;+sip.instance=\"<urn:x>\";reg-id=one",), ("Contact: <>",),
]
BAD_CREDENTIALS = [
    "Digest", "Digest garbage", 'Digest username="alice", realm="oversipd", nonce="1.2.3", uri="x", response="0"',
    'Basic YWxpY2U6eA==', 'Digest username="alice", realm="oversipd", nonce="' + "9" * 300 + '", qop=auth-int',
]

def test_credentials_are_read_with_quoted_pairs_undone_and_other_schemes_refused():
    value = r'Digest username="al\"ice", realm="a\\b", nonce="n", uri="sip:x", response="r", qop=auth, nc=00000001'
    assert digest.parse_credentials(value) == {"username": 'al"ice', "realm": "a\\b", "nonce": "n", "uri": "sip:x",
                                               "response": "r", "qop": "auth", "nc": "00000001"}
    assert digest.parse_credentials('Basic YWxpY2U6eA==') is None



def test_bad_registers_get_400_bad_credentials_a_fresh_challenge_and_the_worker_serves_on(sqlite_server):
    phone = SipPhone(sqlite_server, "alice")
    for headers in BAD_REGISTERS:
        assert phone.authenticated_register(*headers).status == 400, headers
    for credentials in BAD_CREDENTIALS:
        response = phone.register(f"Contact: {phone.contact()}", authorization_header=credentials)
        assert response.status == 401 and len(challenges(response)) == 2, credentials
    assert phone.authenticated_register(f"Contact: {phone.contact()}").status == 200


def test_a_user_registers_only_their_own_address(sqlite_server):
    phone = SipPhone(sqlite_server, "alice")
    phone.user = "bob"            # alice's credentials, bob's To
    phone.password = PASSWORDS["alice"]
    challenged = phone.register(f"Contact: {phone.contact()}")
    credentials = authorization("REGISTER", phone.uri, "alice", PASSWORDS["alice"], challenges(challenged)[0])
    assert phone.register(f"Contact: {phone.contact()}", authorization_header=credentials).status == 403


# --- SIPp: MD5 digest, calls, forking ---------------------------------------------------------------

def sipp_server(oversipd_daemon):
    assert SIPP is not None, "sipp is missing: `make test` installs Debian's sip-tester"
    return registrar_daemon(oversipd_daemon, "sqlite:location.db", algorithms=("MD5",))


def test_sipp_registers_with_md5_and_a_wrong_password_is_challenged_again(oversipd_daemon):
    server = sipp_server(oversipd_daemon)
    ok = run_sipp(server, "register_auth.xml", "-s", "alice", "-au", "alice", "-ap", PASSWORDS["alice"],
                  calls=1, rate=1, timeout=10)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for user, password in (("alice", "wrong"), ("nobody", "wrong")):
        refused = run_sipp(server, "register_refused.xml", "-s", user, "-au", user, "-ap", password,
                           calls=1, rate=1, timeout=10)
        assert refused.returncode == 0, refused.stdout + refused.stderr


def start_callee(server, scenario: str, *args: str) -> tuple[subprocess.Popen, int]:
    """A SIPp UAS on its own port, and bob registered (by a Python phone) with that port as his contact."""
    port = free_port("udp")
    callee = subprocess.Popen([SIPP, "-sf", f"{SIPP_DIR}/{scenario}", "-i", server.host,
                               "-p", str(port), "-m", "1", "-nostdin", "-timeout", "20s", "-timeout_error", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL)
    phone = SipPhone(server, "bob")
    phone.port = port             # the contact is the SIPp callee's address
    assert phone.authenticated_register(f"Contact: {phone.contact()}").status == 200
    phone.close()
    return callee, port


def finished(callee: subprocess.Popen) -> tuple[int, str]:
    out, err = callee.communicate(timeout=30)
    return callee.returncode, out + err


def sipp_caller(server, domain: str | None = None, callee: str = "bob") -> subprocess.Popen:
    """alice calls `callee`@`domain` (default: the server's address) with SIPp, through `server`."""
    return subprocess.Popen([SIPP, "-sf", f"{SIPP_DIR}/auth_call_uac.xml", "-i", server.host,
                             "-p", str(free_port("udp")), "-m", "1", "-nostdin", "-s", callee,
                             "-au", "alice", "-ap", PASSWORDS["alice"], "-key", "caller", "alice",
                             "-key", "domain", domain or f"{server.host}:{server.port}",
                             "-timeout", "15s", "-timeout_error", f"{server.host}:{server.port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def call_bob(server) -> tuple[int, str]:
    return finished(sipp_caller(server))


def test_sipp_caller_reaches_a_registered_sipp_callee_with_record_routing(oversipd_daemon):
    server = sipp_server(oversipd_daemon)
    callee, _ = start_callee(server, "proxy_call_uas.xml")
    status, output = call_bob(server)
    assert status == 0, output
    status, output = finished(callee)
    assert status == 0, output


def test_a_call_forks_to_every_binding_the_200_wins_and_the_ringing_branch_is_cancelled(oversipd_daemon):
    server = sipp_server(oversipd_daemon)
    callees = [start_callee(server, "busy_uas.xml"),
               start_callee(server, "ringing_uas.xml", "-key", "invite_cseq", "2"),
               start_callee(server, "proxy_call_uas.xml")]
    status, output = call_bob(server)
    assert status == 0, output
    for callee, _ in callees:
        status, output = finished(callee)
        assert status == 0, output


def test_a_forked_call_cancelled_by_the_caller_cancels_every_branch_and_ends_487(oversipd_daemon):
    server = sipp_server(oversipd_daemon)
    callees = [start_callee(server, "ringing_uas.xml", "-key", "invite_cseq", "2") for _ in range(2)]
    alice, branch = invite_bob_as_alice(server)
    ruri = f"sip:bob@{server.host}:{server.port}"
    alice.response(180)
    alice.send_request("CANCEL", ruri, cseq=2, to=f"<{ruri}>", branch=branch)
    finals = {alice.response().status, alice.response().status}   # the CANCEL's 200 and the INVITE's 487
    assert finals == {200, 487}
    for callee, _ in callees:   # each rang, got its CANCEL, answered 487 and got the proxy's ACK
        status, output = finished(callee)
        assert status == 0, output


def invite_bob_as_alice(server, *headers: str) -> tuple[SipPhone, str]:
    """alice's INVITE to bob through `server`, answering its 407: (alice's phone, the INVITE's branch)."""
    alice = SipPhone(server, "alice")
    ruri = f"sip:bob@{server.host}:{server.port}"
    first, second = (f"z9hG4bK{uuid.uuid4().hex}" for _ in range(2))
    alice.send_request("INVITE", ruri, *headers, cseq=1, to=f"<{ruri}>", branch=first)
    challenged = alice.response()
    assert challenged.status == 407, challenged.to_bytes()
    alice.send_request("ACK", ruri, cseq=1, to=challenged.header("To"), branch=first)
    credentials = authorization("INVITE", ruri, "alice", PASSWORDS["alice"],
                                challenges(challenged, "Proxy-Authenticate")[0])
    alice.send_request("INVITE", ruri, f"Proxy-Authorization: {credentials}", *headers, cseq=2, to=f"<{ruri}>",
                       branch=second)
    return alice, second


def test_a_6xx_from_one_branch_cancels_the_others_and_reaches_the_caller(oversipd_daemon):
    server = sipp_server(oversipd_daemon)
    ringing = start_callee(server, "ringing_uas.xml", "-key", "invite_cseq", "2")
    declining = start_callee(server, "decline_uas.xml")
    alice, _ = invite_bob_as_alice(server)
    assert alice.response().status == 603
    for callee, _ in (ringing, declining):
        status, output = finished(callee)
        assert status == 0, output


def test_the_407_of_a_forked_call_carries_the_challenges_of_every_branch(oversipd_daemon):
    server = sipp_server(oversipd_daemon)
    callees = [start_callee(server, "challenge_uas.xml", "-key", "realm", realm) for realm in ("one", "two")]
    alice, _ = invite_bob_as_alice(server)
    challenged = alice.response()
    assert challenged.status == 407
    assert sorted(c["realm"] for c in challenges(challenged, "Proxy-Authenticate")) == ["one", "two"]
    for callee, _ in callees:
        status, output = finished(callee)
        assert status == 0, output


def test_a_binding_s_path_becomes_the_route_set_of_its_branch(oversipd_daemon):
    server = sipp_server(oversipd_daemon)
    edge = SipPhone(server, "bob")              # an edge proxy in front of bob: the REGISTER came through it
    path = f"<sip:{server.host}:{edge.port};lr>"
    contact = f"sip:bob@192.0.2.9:5060"         # bob's address, reachable only through the edge proxy
    registered = edge.authenticated_register(f"Path: {path}", f"Contact: <{contact}>")
    assert registered.status == 200 and registered.headers("Path") == [path]   # echoed (RFC 3327 §5.3)
    alice, _ = invite_bob_as_alice(server)
    invite = edge.receive()
    assert (invite.method, str(invite.ruri), invite.headers("Route")) == ("INVITE", contact, [path])
    edge.send(reply(invite, "486 Busy Here", to_tag="edge"))
    assert alice.response().status == 486


def test_a_binding_whose_flow_token_no_longer_checks_gets_430_not_a_loop(oversipd_daemon):
    server = sipp_server(oversipd_daemon)
    bob = SipPhone(server, "bob")
    stale = f"<sip:ovfAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@{server.host}:{server.port};transport=tcp;lr;ob>"  # another life's
    assert bob.authenticated_register(f"Path: {stale}", f"Contact: {bob.contact()}").status == 200
    alice, _ = invite_bob_as_alice(server)
    assert alice.response().status == 430


def test_an_unregistered_user_gets_480(oversipd_daemon):
    server = sipp_server(oversipd_daemon)
    status, output = call_bob(server)
    assert status != 0 and "480" in output, output


# --- a phone behind a connection ------------------------------------------------------------------------

def test_a_phone_registered_over_tcp_gets_its_calls_over_that_connection_from_any_worker(oversipd_daemon):
    server = sipp_server(oversipd_daemon)
    bob = SipPhone(server, "bob", transport="tcp")
    # Its contact names a port nobody listens on: only the connection reaches the phone (it sits behind NAT).
    bob.port = free_port("tcp")
    assert bob.authenticated_register(f"Contact: {bob.contact()}").status == 200
    for _ in range(2):   # two calls: over UDP they land on either worker
        caller = sipp_caller(server)
        answer_one_call(bob, server.daemon)
        status, output = finished(caller)
        assert status == 0, output


def answer_one_call(phone: SipPhone, daemon=None) -> None:
    """The callee's side over its TCP connection: 200 to the INVITE (Record-Route copied), ACK, BYE -> 200.

    The ACK must come too (over the connection: the 200's Contact reaches
    nobody), in either order with the BYE (each may pass through either worker).
    """
    try:
        invite = phone.receive()
    except Exception:
        print(daemon.log_text() if daemon else "")
        raise
    assert invite.method == "INVITE", invite.to_bytes()
    phone.send(reply(invite, "200 OK", to_tag="callee"))
    received: list[str] = []
    while not {"ACK", "BYE"} <= set(received):
        request = phone.receive()
        assert request.method in ("ACK", "BYE"), request.to_bytes()
        received.append(request.method)
        if request.method == "BYE":
            phone.send(reply(request, "200 OK"))


def reply(request, status_line: str, to_tag: str | None = None) -> bytes:
    lines = [f"SIP/2.0 {status_line}"]
    lines += [f"Via: {value}" for value in request.headers("Via")]
    lines += [f"Record-Route: {value}" for value in request.headers("Record-Route")]
    lines += [f"From: {request.header('From')}", f"To: {request.header('To')}" + (f";tag={to_tag}" if to_tag else ""),
              f"Call-ID: {request.header('Call-ID')}", f"CSeq: {request.header('CSeq')}",
              "Contact: <sip:bob@127.0.0.1:1;transport=tcp>", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- oversipd user, the [registrar] and [auth] tables ------------------------------------------------------

def test_user_add_list_del_keep_only_ha1(oversipd_daemon):
    server = registrar_daemon(oversipd_daemon, "sqlite:location.db", workers=1)
    daemon = server.daemon
    assert user_command(daemon, "list").stdout.split() == ["alice", "bob"]
    changed = user_command(daemon, "add", "alice", password="new-password")
    assert changed.returncode == 0
    assert user_command(daemon, "del", "bob").returncode == 0
    assert user_command(daemon, "list").stdout.split() == ["alice"]
    missing = user_command(daemon, "del", "bob")
    assert missing.returncode == 1 and "bob" in missing.stderr
    store = (daemon.directory / "location.db").read_bytes() + (daemon.directory / "location.db-wal").read_bytes()
    assert b"new-password" not in store and b"alice-secret" not in store
    phone = SipPhone(server, "alice", password="new-password")
    assert phone.authenticated_register(f"Contact: {phone.contact()}").status == 200


def test_user_add_asks_for_the_password_twice_on_a_terminal(oversipd_daemon):
    import os
    import pty
    import select
    server = registrar_daemon(oversipd_daemon, "sqlite:location.db", workers=1)
    daemon = server.daemon
    pid, terminal = pty.fork()
    if pid == 0:   # the child: `oversipd user add carol` on a terminal
        os.execvpe(daemon.command()[0], [*daemon.command("user", "add", "carol", "-c", str(daemon.conf_path))],
                   daemon.environment())
    said = b""
    for answer in (b"carol-secret\n", b"carol-secret\n", None):
        while answer is not None and not said.rstrip().endswith(b":"):
            assert select.select([terminal], [], [], 15)[0], said
            said += os.read(terminal, 1024)
        if answer is None:
            break
        os.write(terminal, answer)
        said += b"|"
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"Password:" in said and b"Again:" in said and b"carol-secret" not in said   # not echoed
    phone = SipPhone(server, "carol", password="carol-secret")
    assert phone.authenticated_register(f"Contact: {phone.contact()}").status == 200


@pytest.mark.parametrize("table, key, value", [
    ("registrar", "max_expirs", 10), ("registrar", "min_expires", 0), ("registrar", "store", "mysql://x"),
    ("auth", "algorithms", ["SHA-512"]), ("auth", "realm", ""), ("auth", "colour", "blue"),
])
def test_a_mistake_in_registrar_or_auth_is_exit_2_naming_file_and_key(oversipd_daemon, table, key, value):
    daemon = oversipd_daemon(start=False, extra_tables={table: {key: value}})
    for command in (("check",), ("user", "list")):
        result = daemon.run_command(*command, "-c", str(daemon.conf_path))
        assert result.returncode == 2, result.stderr
        assert f"{daemon.conf_path}: {table}.{key}:" in result.stderr


def test_user_commands_without_an_auth_table_are_exit_2(oversipd_daemon):
    daemon = oversipd_daemon(start=False)
    result = daemon.run_command("user", "list", "-c", str(daemon.conf_path))
    assert result.returncode == 2 and f"{daemon.conf_path}: auth:" in result.stderr


# --- several nodes, a store that is down ---------------------------------------------------------------------

def test_two_nodes_on_one_postgresql_reach_a_phone_over_the_connection_it_registered_on(oversipd_daemon, postgres):
    """bob registers over TCP on node A; alice calls him through node B, which routes via A's Route to his connection."""
    assert SIPP is not None
    store = new_database(postgres)
    shared = {"algorithms": ("MD5",), "sip": {"local_domains": ["example.test"]},
              "registrar": {"domains": ["example.test"]}}
    node_a = registrar_daemon(oversipd_daemon, store, host="127.0.0.2", **shared)
    node_b = registrar_daemon(oversipd_daemon, store, host="127.0.0.3", **shared)
    bob = SipPhone(node_a, "bob", transport="tcp", domain="example.test")
    bob.port = free_port("tcp")   # a contact nobody listens on: only his connection to node A reaches him
    assert bob.register(f"Contact: {bob.contact()}").status == 401
    registered = bob.authenticated_register(f"Contact: {bob.contact()}")
    assert registered.status == 200, registered.to_bytes()
    caller = sipp_caller(node_b, domain="example.test")
    answer_one_call(bob, node_a.daemon)
    status, output = finished(caller)
    assert status == 0, output


def test_a_store_that_cannot_be_reached_gets_503_with_retry_after_and_options_still_200(oversipd_daemon):
    server = registrar_daemon(oversipd_daemon, "postgresql://nobody@/nothing?host=/nonexistent&port=1", workers=1,
                              users=False)
    phone = SipPhone(server, "alice")
    refused = phone.register(f"Contact: {phone.contact()}")
    assert (refused.status, refused.header("Retry-After")) == (503, "5"), server.daemon.log_text()
    phone.send(f"OPTIONS {phone.uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{phone.port};branch=z9hG4bKo1\r\n"
               f"From: <sip:a@x>;tag=1\r\nTo: <{phone.uri}>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\n"
               "Content-Length: 0\r\n\r\n".encode())
    assert phone.receive().status == 200


# --- two softphones through `make run`'s configuration ------------------------------------------------------

@pytest.fixture
def baresip_phones():
    phones = []
    yield phones
    for phone in phones:
        phone.stop()


def test_two_baresip_phones_register_with_passwords_and_call_each_other(oversipd_daemon, tmp_path, baresip_phones):
    assert shutil.which("baresip"), "baresip is missing: `make test` installs Debian's baresip-core"
    make_run = tomllib.loads((REPO / "oversipd.conf").read_text())["auth"]   # what `make run` offers
    server = registrar_daemon(oversipd_daemon, "sqlite:location.db", algorithms=tuple(make_run["algorithms"]))
    bob = Baresip(tmp_path / "bob", "bob", server)
    baresip_phones.append(bob)
    bob.wait_for("200 OK")                      # registered
    alice = Baresip(tmp_path / "alice", "alice", server, f"/dial sip:bob@{server.host}:{server.port}")
    baresip_phones.append(alice)
    alice.wait_for("call established")
    bob.wait_for("call established")


def test_a_postgresql_store_imports_its_driver_in_the_master_before_the_fork():
    """Found by the soak (docs/RELIABILITY.md §5): each worker imported psycopg in its start, 0.4 s of
    CPU that, with several workers starting on a loaded machine, outlasted worker_timeout (SIGABRT)."""
    import sys
    check = ("import sys; from oversipd.sip.store import open_store; before = 'psycopg_pool' in sys.modules; "
             "open_store('postgresql://nobody@/nothing?host=/nonexistent'); "
             "print(before, 'psycopg_pool' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]
