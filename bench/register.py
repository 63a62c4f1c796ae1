"""`make bench-register`: oversipd's registrar next to Kamailio's, SIPp as the phones, in the same run.

Tables (each a rate search per server, the servers taking turns run by run,
with bench/sip.py's search, runs and CPU accounting):

* register: authenticated REGISTERs/s over UDP (REGISTER, 401, REGISTER with
            credentials, 200), the users of an injection file taking turns;
* calls:    calls/s over UDP from one registered user to another (INVITE, 407,
            ACK, INVITE with credentials, 180, 200, ACK, BYE, 200), the callee
            found in the location store; every user registered at one SIPp UAS.

Servers: oversipd (the repository's server.py, `--workers` workers) on SQLite
and on PostgreSQL; Kamailio (bench/kamailio/register.cfg: auth_db + usrloc
in write-back mode, registrar's lookup(), tm) on db_sqlite and db_postgres,
2 children.  PostgreSQL is a private server (the tests' PostgresServer) on
a loopback TCP port, one database per server.  The digest is MD5 on both:
SIPp's, and the only one Kamailio's auth_db speaks.

    python -m bench.register [--cases register,calls] [--users 1000] [--duration 10] [--rounds 2] ...
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import os
import shlex
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from .sip import (Bench, Case, Ports, ServerError, add_search_options, checked_tools, interrupted, log,
                  machine_facts, measured, names, number, percent, publish, ratio, wait_bound)
from .sip_search import Search
from .sip_servers import BENCH, HOST, Kamailio, Oversipd, SipServer, port_free
from .sipp_client import SCENARIOS, SippCounts, Uas, run_uac

REPO = BENCH.parent
SECTION = "bench-register"
REALM = "bench"                           # [auth] realm and Kamailio's www_authorize() realm
DOMAIN = HOST                             # the users' domain: sip:u0000@127.0.0.1
REGISTER_UAC = SCENARIOS / "register-uac.xml"
CALL_UAC = SCENARIOS / "call-uac.xml"
KAMAILIO_REGISTRAR = BENCH / "kamailio" / "register.cfg"
KAMAILIO_SCHEMA = ("standard-create.sql", "auth_db-create.sql", "usrloc-create.sql")
KAMAILIO_SQL = {"sqlite": Path("/usr/share/kamailio/db_sqlite"), "postgresql": Path("/usr/share/kamailio/postgres")}
OVERSIPD_CONF = BENCH / "oversipd-register.conf"
SERVER_SCRIPT = REPO / "server.py"
ROLE = "registrar"
SERVERS = ("oversipd-sqlite", "oversipd-postgresql", "kamailio-sqlite", "kamailio-postgresql")
# The rate at which every user registers at the UAS before the calls: low enough for every server.
PRE_REGISTER_RATE = 200.0
# The phones' side: a UDP socket per registration or call (SIPp -t un), as phones come from many
# ports; from one socket, every request would land on one oversipd worker (SO_REUSEPORT hashes
# the 4-tuple, PITFALLS.md), while Kamailio's children read one shared socket.
PHONES = "udp-per-call"

CASES = {
    # The server receives two REGISTERs per registration: CPU per "message" is per REGISTER transaction.
    "register": Case("register", "register", "udp", "authenticated REGISTERs (401, then 200) over UDP",
                     "registrations/s", 2, 200),
    # INVITE, ACK of the 407, INVITE, ACK, BYE from the caller; 180, 200, 200 from the callee.
    "calls": Case("calls", "calls", "udp", "calls to registered users over UDP (407, lookup, 180, 200, BYE)",
                  "calls/s", 8, 100),
}


# --- the users ------------------------------------------------------------------------


def user_names(count: int) -> list[str]:
    return [f"u{index:05d}" for index in range(count)]


def password_of(name: str) -> str:
    return f"secret-{name}"


def write_injection_file(path: Path, users: list[str]) -> Path:
    """SIPp's -inf: user; password; the user it calls (the next one); SIPp's keyword for its credentials
    (SIPp 3.6 reads no [field] inside [authentication] in a scenario, but parses one injected whole)."""
    lines = [f"{name};{password_of(name)};{users[(index + 1) % len(users)]};"
             f"[authentication username={name} password={password_of(name)}]" for index, name in enumerate(users)]
    path.write_text("SEQUENTIAL\n" + "\n".join(lines) + "\n")
    return path


def md5_ha1(name: str) -> str:
    return hashlib.md5(f"{name}:{REALM}:{password_of(name)}".encode()).hexdigest()


# --- the databases --------------------------------------------------------------------


class PrivatePostgres:
    """The tests' private PostgreSQL server, also on a loopback TCP port (Kamailio's db_postgres takes a host)."""

    def __init__(self) -> None:
        sys.path.insert(0, str(REPO / "tests"))
        from test_mod_postgresql import PostgresServer  # the tests' helper: initdb, pg_ctl
        self.server = PostgresServer(Path(tempfile.mkdtemp(prefix="ovs-pg-bench-register-")))
        self.port = next(port for port in range(25432, 25532) if port_free(port))

    def start(self) -> None:
        self.server.initdb()
        with open(self.server.data / "postgresql.conf", "a") as conf:   # later lines win
            conf.write(f"listen_addresses = '{HOST}'\nport = {self.port}\nmax_connections = 100\n")
        self.server.start()
        for database in ("oversipd", "kamailio"):
            self.execute("postgres", f"CREATE DATABASE {database}")

    def url(self, scheme: str, database: str) -> str:
        return f"{scheme}://postgres@{HOST}:{self.port}/{database}"

    def execute(self, database: str, sql: str) -> None:
        import psycopg
        with psycopg.connect(self.url("postgresql", database), autocommit=True) as connection:
            connection.execute(sql)

    def remove(self) -> None:
        import shutil
        if self.server.is_running():
            self.server.stop()
        shutil.rmtree(self.server.base, ignore_errors=True)


class SqliteFile:
    """A server's SQLite database, in WAL mode (the mode stays with the file): readers never wait
    for a writer, in Kamailio (usrloc's write-back timer) as in oversipd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA journal_mode=WAL")

    def execute(self, sql: str) -> None:
        with sqlite3.connect(self.path) as connection:
            connection.executescript(sql)


class PostgresDatabase:
    def __init__(self, server: PrivatePostgres, name: str) -> None:
        self.server = server
        self.name = name

    def execute(self, sql: str) -> None:
        self.server.execute(self.name, sql)


Database = SqliteFile | PostgresDatabase


def kamailio_schema_and_users(backend: str, users: list[str]) -> str:
    """SQL for Kamailio's tables (the Debian package's own files) and its subscribers, HA1 only."""
    schema = "\n".join((KAMAILIO_SQL[backend] / name).read_text() for name in KAMAILIO_SCHEMA)
    rows = ",\n".join(f"('{name}', '{DOMAIN}', '{md5_ha1(name)}')" for name in users)
    return f"{schema}\nINSERT INTO subscriber (username, domain, ha1) VALUES\n{rows};\n"


async def add_oversipd_users(url: str, users: list[str]) -> None:
    """The users, through oversipd's store API (what `oversipd user add` does), HA1 only."""
    from oversipd.sip import digest
    from oversipd.sip.store import open_store
    store = open_store(url)
    for name in users:
        await store.put_user(REALM, name, digest.ha1_all(name, REALM, password_of(name)))


# --- the servers ----------------------------------------------------------------------


class WithoutBindings:
    """A server that starts each time with no binding (the users stay): a table's runs do not
    inherit what a previous table's, or an overloaded run's, left in the location store."""

    database: Database
    location_table: str

    def empty_location(self) -> None:
        self.database.execute(f"DELETE FROM {self.location_table}")


class KamailioRegistrar(WithoutBindings, Kamailio):
    """Kamailio with bench/kamailio/register.cfg on a database URL (db_sqlite or db_postgres)."""

    location_table = "location"

    def __init__(self, name: str, port: int, workdir: Path, db_url: str, database: Database) -> None:
        super().__init__(name, ROLE, port, workdir)
        self.db_url = db_url
        self.database = database

    def config(self) -> Path:
        return KAMAILIO_REGISTRAR

    def defines(self) -> list[str]:
        postgres = ["-A", "WITH_POSTGRES"] if self.db_url.startswith("postgres") else []
        return ["-A", f'DBURL="{self.db_url}"', *postgres]

    def prepare(self) -> None:
        self.empty_location()


class OversipdRegistrar(WithoutBindings, Oversipd):
    """oversipd with server.py and bench/oversipd-register.conf on a store URL."""

    location_table = "bindings"

    def __init__(self, name: str, port: int, workdir: Path, binary: Path, workers: int, store: str,
                 database: Database) -> None:
        super().__init__(name, ROLE, port, workdir, binary, workers, SERVER_SCRIPT, OVERSIPD_CONF)
        self.store = store
        self.database = database

    def prepare(self) -> None:
        super().prepare()
        conf = self.workdir / "oversipd.conf"
        conf.write_text(conf.read_text().replace("@STORE@", self.store))
        self.empty_location()


def make_servers(args: argparse.Namespace, ports: Ports, workdir: Path, users: list[str],
                 postgres: PrivatePostgres | None) -> list[SipServer]:
    """The servers asked for, their stores made and filled with the users."""
    servers: list[SipServer] = []
    for index, name in enumerate(SERVERS):
        if name not in args.servers:
            continue
        kind, backend = name.split("-")
        directory = workdir / name
        directory.mkdir(parents=True)
        os.chmod(directory, 0o755)
        port = ports.server(index)
        database: Database
        if backend == "sqlite":
            database = SqliteFile(directory / f"{kind}.db")
        else:
            assert postgres is not None
            database = PostgresDatabase(postgres, kind)
        if kind == "kamailio":
            database.execute(kamailio_schema_and_users(backend, users))
            url = f"sqlite:///{database.path}" if isinstance(database, SqliteFile) \
                else postgres.url("postgres", "kamailio")   # db_sqlite: sqlite:// + an absolute path
            servers.append(KamailioRegistrar(name, port, directory, url, database))
        else:
            url = f"sqlite://{database.path}" if isinstance(database, SqliteFile) \
                else postgres.url("postgresql", "oversipd")
            asyncio.run(add_oversipd_users(url, users))
            servers.append(OversipdRegistrar(name, port, directory, args.oversipd, args.workers, url, database))
        log(f"bench-register: {name}: {len(users)} users in {url}")
    return servers


# --- the runs -------------------------------------------------------------------------


class RegisterBench(Bench):
    """bench/sip.py's Bench with the phones of this benchmark: SIPp with the users' injection file."""

    def __init__(self, args: argparse.Namespace, workdir: Path, users: list[str]) -> None:
        super().__init__(args, workdir)
        self.users = users
        self.injection = write_injection_file(workdir / "users.csv", users)
        self.uas_ports: dict[str, int] = {}

    def uas_port(self, server: SipServer) -> int:
        """The port every user of `server` registers as its Contact (the UAS of the calls listens there)."""
        if server.name not in self.uas_ports:
            self.uas_ports[server.name] = self.ports.next_free(self.ports.uas_ports)
        return self.uas_ports[server.name]

    def sipp_options(self, server: SipServer) -> tuple[str, ...]:
        return ("-inf", str(self.injection), "-key", "contact_port", str(self.uas_port(server)))

    def after_start(self, server: SipServer, case: Case) -> None:
        """Before calls: every user registered at the UAS (Kamailio reloads its table too, but
        a binding of oversipd's or Kamailio's may have been refreshed by the register table)."""
        if case.role != "calls":
            return
        rundir = self.rundir(server)
        counts = run_uac(REGISTER_UAC, PHONES, self.ports.next_free(self.ports.uac_ports),
                         f"{HOST}:{server.port}", PRE_REGISTER_RATE, len(self.users), rundir,
                         options=self.sipp_options(server))
        if counts.successful != len(self.users):
            raise SystemExit(f"bench-register: {server.name} registered {counts.successful} of {len(self.users)} "
                             f"users before the calls; see {rundir}")

    def drive(self, server: SipServer, case: Case, rate: float, calls: int,
              rundir: Path) -> tuple[SippCounts, SippCounts | None, list[int], int]:
        target = f"{HOST}:{server.port}"
        uac_port = self.ports.next_free(self.ports.uac_ports)
        if case.role == "register":
            (uac, _), spent, rcvbuf_errors = measured(server, lambda: (run_uac(
                REGISTER_UAC, PHONES, uac_port, target, rate, calls, rundir,
                options=self.sipp_options(server)), None))
            return uac, None, spent, rcvbuf_errors
        uas_port = self.uas_port(server)
        uas = Uas(case.transport, uas_port, calls, rundir)
        try:
            wait_bound(uas_port, uas)
            (uac, uas_counts), spent, rcvbuf_errors = measured(server, lambda: (
                run_uac(CALL_UAC, PHONES, uac_port, target, rate, calls, rundir,
                        options=self.sipp_options(server)),
                uas.finish()))
        finally:
            uas.end()
        return uac, uas_counts, spent, rcvbuf_errors


# --- the report -----------------------------------------------------------------------


def peer_of(name: str) -> str:
    """The Kamailio an oversipd is compared with: the one on the same database."""
    return name.replace("oversipd-", "kamailio-")


def table(case: Case, searches: dict[str, Search], args: argparse.Namespace) -> str:
    same = next((s.same_rate for s in searches.values() if s.same_rate), None)
    at_same = f"at {same:g}/s, every server" if same else "at a rate every server held"
    per = "REGISTER transaction" if case.role == "register" else "SIP message received"
    lines = [f"### {case.title}", "",
             f"| server | {case.unit}, 0 failed, {args.rounds} × {args.duration:g} s | CPU µs per {per} "
             f"at that rate | CPU µs per {per} {at_same} | oversipd ÷ Kamailio on the same database: rate "
             f"| ÷ Kamailio: CPU {at_same} | busiest process's share of the CPU | retransmissions "
             "| what failed just above it |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, search in searches.items():
        peer = searches.get(peer_of(name)) if name.startswith("oversipd") else None
        limit = search.gave_up or search.limit or f"nothing up to --max-rate {args.max_rate:g}"
        lines.append(f"| {display_name(name, args)} | {number(search.rate)} | {number(search.cpu_us_per_message, 1)} "
                     f"| {number(search.same_rate_cpu, 1)} "
                     f"| {ratio(search.rate, peer.rate) if peer else ''} "
                     f"| {ratio(search.same_rate_cpu, peer.same_rate_cpu) if peer else ''} "
                     f"| {percent(search.busiest_share)} | {search.retransmissions} | {limit} |")
    lines += ["", "Target (issue 20): oversipd's rate ≥ 1.0 × Kamailio's on the same database."]
    return "\n".join(lines)


def display_name(name: str, args: argparse.Namespace) -> str:
    kind, backend = name.split("-")
    database = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[backend]
    if kind == "oversipd":
        return f"oversipd, {args.workers} workers, {database}"
    return f"Kamailio, 2 children, auth_db + usrloc (db_mode 2) on db_{'postgres' if backend != 'sqlite' else backend}"


def render(tables: list[str], args: argparse.Namespace, command: str, seconds: float,
           load_before: tuple[float, ...]) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "## Registrar: oversipd next to Kamailio auth_db + usrloc (`make bench-register`)",
        "",
        f"Made by `{command}` on {when} in {seconds:.0f} s: probes of {args.probe_duration:g} s, then "
        f"{args.rounds} sustained runs of {args.duration:g} s at the rate found; the servers take turns run by "
        f"run. {args.users} users, each in both servers' stores beforehand (HA1 only). **The machine's 2 cores "
        "were shared with other engineers' work during the run: the figures are indicative, the ratios between "
        "servers measured in alternation more than the absolute rates.**",
        "",
        *[f"* {fact}" for fact in machine_facts(args, load_before)],
        f"* interpreter: `{sys.version}`",
        "",
        *[t + "\n" for t in tables],
        "How: SIPp with an injection file of the users (`bench/sipp/register-uac.xml`: REGISTER, 401, "
        "REGISTER with `[authentication]`, 200; `bench/sipp/call-uac.xml`: INVITE, 407, ACK, INVITE with "
        "credentials, then the call by the recorded route to a SIPp UAS where every user registered "
        f"beforehand, at {PRE_REGISTER_RATE:g}/s). The digest is **MD5** on both sides (SIPp's; Kamailio's "
        "auth_db checks the subscriber table's `ha1`; oversipd's `[auth] algorithms = [\"MD5\"]`). oversipd runs "
        "the repository's `server.py` (what `make run` serves); Kamailio `bench/kamailio/register.cfg` "
        "(www_authorize/save on REGISTER, proxy_authorize + lookup(\"location\") + record_route + t_relay on "
        "INVITE), usrloc `db_mode` 2 (write-back, every 10 s). Both SQLite files in WAL mode. PostgreSQL: a "
        "private server over loopback TCP, `fsync = off`. Every (re)start of a server begins with an empty "
        "location table (the users stay): the calls table does not inherit the bindings the REGISTER table or "
        "an overloaded run left. The rate search, the success rule, and the CPU accounting (`/proc/PID/schedstat` of "
        "every process of the server) are `make bench-sip`'s (see its section); CPU per REGISTER transaction is "
        "the server's CPU per registration ÷ 2 (the challenged REGISTER and the authenticated one).",
    ])


# --- the command line -----------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.register", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cases", type=names, default=list(CASES), help="tables to make: " + ", ".join(CASES))
    parser.add_argument("--servers", type=lambda v: set(names(v)), default=set(SERVERS), help=", ".join(SERVERS))
    parser.add_argument("--users", type=int, default=1000, help="distinct users, in every server's store")
    add_search_options(parser, SECTION, base_port=24000)
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES] + [s for s in args.servers if s not in SERVERS]
    if unknown:
        parser.error(f"unknown {', '.join(unknown)} (cases: {', '.join(CASES)}; servers: {', '.join(SERVERS)})")
    checked_tools(parser, "make bench-register")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(["python", "-m", "bench.register", *argv])
    began, load_before = time.monotonic(), os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="ovs-bench-register-"))
    os.chmod(workdir, 0o755)
    users = user_names(args.users)
    postgres = PrivatePostgres() if any(name.endswith("postgresql") for name in args.servers) else None
    results: dict[str, dict[str, Search]] = {}
    servers: list[SipServer] = []
    try:
        if postgres is not None:
            postgres.start()
        servers = make_servers(args, Ports(args.base_port), workdir, users, postgres)
        bench = RegisterBench(args, workdir, users)
        for key in args.cases:
            log(f"bench-register: {CASES[key].title}: {', '.join(s.name for s in servers)}")
            results[key] = bench.search(servers, CASES[key])
    except ServerError as error:
        raise SystemExit(f"bench-register: {error}") from None
    finally:
        for server in servers:
            server.stop()
        if postgres is not None:
            postgres.remove()
        if args.keep:
            log(f"bench-register: run directories kept in {workdir}")
        else:
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)
    tables = [table(CASES[key], searches, args) for key, searches in results.items()]
    report = render(tables, args, command, time.monotonic() - began, load_before)
    publish(report, results, args, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
