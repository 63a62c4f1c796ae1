"""A server script looking up an account in MariaDB/MySQL with oversip-mod-mysql.

In OverSIP the lookup runs for each SIP request (`SipEvents.on_request`).
Until oversipd's SIP events land, it runs in each worker after every
reload (SIGHUP): the account id is `[modules.lookup] account`, the
connection options are `[modules.accounts_db]`:

    [modules.accounts_db]
    unix_socket = "/run/mysqld/mysqld.sock"
    user = "oversipd"
    db = "sip"

    [modules.lookup]
    account = 42
"""

from oversipd import Logger, SystemCallbacks, SystemEvents, module_settings
from oversipd.modules import mysql

log = Logger("Lookup example")


@SystemEvents.on_initialize
def configure():
    # The master declares the pool; each worker opens its own 2 connections.
    mysql.add_pool("accounts", pool_size=2, **module_settings("accounts_db"))


async def account_name(account_id):
    """The account's name, or None; runs on the worker's reactor without blocking it."""
    async with mysql.pool("accounts").acquire() as connection:
        async with connection.cursor() as cursor:
            await cursor.execute("SELECT name FROM accounts WHERE id = %s", (account_id,))
            row = await cursor.fetchone()
    return row[0] if row else None


@SystemCallbacks.on_reload
async def look_up_account():
    account_id = module_settings("lookup").get("account", 1)
    name = await account_name(account_id)
    log.log_info(f"account {account_id}: {name if name is not None else 'not found'}")
