"""`oversipd user add|del|list NAME -c FILE` (SIP.md §14): the users of [auth], kept as HA1 only."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from .errors import EXIT_FATAL, EXIT_OK, EXIT_USAGE, ConfigError
from .settings import Settings, default_conf_path, load_settings

NO_SUCH_USER = "{name}: no such user in realm {realm!r}"
USER_ADDED = "{name}: added to realm {realm!r}"
USER_DELETED = "{name}: deleted from realm {realm!r}"


def add_parser(commands: argparse._SubParsersAction, add_conf) -> None:
    user = commands.add_parser("user", help="add, delete or list the users of [auth] (digest authentication)")
    actions = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("add", "add a user or change its password (read from stdin, or prompted)"),
                         ("del", "delete a user"), ("list", "list the users")):
        sub = actions.add_parser(action, help=text)
        if action != "list":
            sub.add_argument("name", metavar="NAME")
        add_conf(sub)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.conf or default_conf_path())
    if settings.auth is None:
        raise ConfigError(str(settings.path), "auth", "no [auth] table: there is no user store")
    if args.action != "list" and not _valid_name(args.name):
        print(f"oversipd: {args.name!r}: a user name is printable, without spaces, ':' or '\"'", file=sys.stderr)
        return EXIT_USAGE
    password = _password() if args.action == "add" else ""
    if args.action == "add" and not password:
        print("oversipd: empty password", file=sys.stderr)
        return EXIT_USAGE
    from .sip.store import StoreError
    try:
        return asyncio.run(_act(settings, args, password))
    except StoreError as error:
        print(f"oversipd: user store: {error}", file=sys.stderr)
        return EXIT_FATAL


async def _act(settings: Settings, args: argparse.Namespace, password: str) -> int:
    from .sip import digest
    from .sip.store import open_store
    auth = settings.auth
    assert auth is not None
    store = open_store(auth.store)
    if args.action == "list":
        for name in await store.users(auth.realm):
            print(name)
        return EXIT_OK
    if args.action == "add":
        await store.put_user(auth.realm, args.name, digest.ha1_all(args.name, auth.realm, password))
        print(USER_ADDED.format(name=args.name, realm=auth.realm))
        return EXIT_OK
    if not await store.delete_user(auth.realm, args.name):
        print(f"oversipd: {NO_SUCH_USER.format(name=args.name, realm=auth.realm)}", file=sys.stderr)
        return EXIT_FATAL
    print(USER_DELETED.format(name=args.name, realm=auth.realm))
    return EXIT_OK


def _password() -> str:
    """The first line of stdin when it is not a terminal; else asked twice."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        print("oversipd: the passwords differ", file=sys.stderr)
        return ""
    return first


def _valid_name(name: str) -> bool:
    return bool(name) and name.isprintable() and not any(c in name for c in ' :"\\@')
