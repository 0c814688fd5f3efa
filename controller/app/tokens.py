"""``ebc token create|list|revoke``: API token housekeeping on the gateway itself.

Run by an administrator with access to the state directory; the daemon may be running (SQLite WAL
lets both use the file). The plaintext is printed once and never stored; each change is audited
with the local user's name.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time

from controller.config import Config
from controller.core.actors import Actor, Role
from controller.storage.journal import DuplicateError, Store, StoreError


def _cli_actor() -> Actor:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers): still audit something useful
        user = "unknown"
    return Actor(name=f"cli:{user}", role=Role.ADMIN, via="system")


def token_command(args: argparse.Namespace, cfg: Config) -> int:
    try:
        store = Store.in_state_dir(cfg.state_dir)
    except (StoreError, OSError) as exc:
        print(f"cannot open the state database in {cfg.state_dir}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.token_command == "create":
            try:
                token = store.create_token(args.name, Role(args.role))
            except (DuplicateError, ValueError) as exc:
                print(str(exc), file=sys.stderr)
                return 1
            store.audit(_cli_actor(), "token.create", args.name, {"role": args.role})
            print(token)
            print(f"token '{args.name}' ({args.role}) created; it is shown only this once — store it now. "
                  f"Use it as 'Authorization: Bearer <token>'.", file=sys.stderr)
            return 0
        if args.token_command == "list":
            for info in store.list_tokens():
                created = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created_at))
                print(f"{info.name}\t{info.role.value}\t{info.id}\tcreated {created}")
            return 0
        if not store.revoke_token(args.name):
            print(f"no active token named '{args.name}'", file=sys.stderr)
            return 1
        store.audit(_cli_actor(), "token.revoke", args.name)
        print(f"token '{args.name}' revoked")
        return 0
    finally:
        store.close()
