"""``ebc county …``: run the county service, manage its API tokens.

    ebc county --config county.yaml                 (same as ``run``)
    ebc county run --config county.yaml
    ebc county token create NAME --role viewer|operator|admin --config county.yaml
    ebc county token list --config county.yaml
    ebc county token revoke ID --config county.yaml
    ebc county keygen --type ed25519|sm2 --out county.key

A token is printed once, at creation; only its SHA-256 is stored. ``keygen`` writes the county's
private signing key (mode 0600, never over an existing file) and prints the public key to paste into
every gateway's ``county.keys`` (docs/county-commands.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from county.config import CountyConfigError, load_county_config
from county.store import ROLES, open_store


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebc county", description="The county centre service")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the service")
    run.add_argument("--config", required=True)
    run.add_argument("--log-level", default="INFO")
    token = sub.add_parser("token", help="API tokens")
    tsub = token.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create")
    create.add_argument("name")
    create.add_argument("--role", choices=ROLES, required=True)
    create.add_argument("--config", required=True)
    lst = tsub.add_parser("list")
    lst.add_argument("--config", required=True)
    revoke = tsub.add_parser("revoke")
    revoke.add_argument("id", type=int)
    revoke.add_argument("--config", required=True)
    keygen = sub.add_parser("keygen", help="a new county signing key; prints the public key")
    keygen.add_argument("--type", choices=["ed25519", "sm2"], required=True)
    keygen.add_argument("--out", required=True, help="the private key file to create (never overwritten)")
    keygen.add_argument("--key-id", default="county-1", help="the id to show in the gateway config snippet")
    return parser


def _keygen(key_type: str, out: str, key_id: str) -> int:
    from county.commands import SigningKeyError, keygen  # cryptography and gmssl only here

    try:
        public = keygen(key_type, Path(out))  # type: ignore[arg-type]
    except FileExistsError as exc:
        print(f"keygen: {exc}", file=sys.stderr)
        return 1
    except (OSError, SigningKeyError) as exc:
        print(f"keygen: cannot write {out}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 1
    print(f"private key written to {out} (mode 0600; keep it on the county server only).", file=sys.stderr)
    print(f"Set signing: {{type: {key_type}, key_id: {key_id}, private_key_file: {out}}} in county.yaml,\n"
          f"and add this under county.keys in every gateway's config:", file=sys.stderr)
    print(yaml_snippet(key_type, key_id, public))
    return 0


def yaml_snippet(key_type: str, key_id: str, public: str) -> str:
    """The gateway config entry for the county's public key."""
    body = "\n".join(f"      {line}" for line in public.strip().splitlines())
    return f"- id: {key_id}\n  type: {key_type}\n  public_key: |\n{body}"


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if not args_in or args_in[0] not in ("run", "token", "keygen", "-h", "--help"):
        args_in.insert(0, "run")
    args = _parser().parse_args(args_in)
    if args.command == "keygen":
        return _keygen(args.type, args.out, args.key_id)
    try:
        cfg = load_county_config(args.config)
    except CountyConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "run":
        logging.basicConfig(level=args.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from county.service import run_service  # uvicorn and paho only when running

        try:
            asyncio.run(run_service(cfg))
        except CountyConfigError as exc:  # the signing key, read at start
            print(exc, file=sys.stderr)
            return 2
        return 0
    store = open_store(cfg)
    try:
        if args.action == "create":
            try:
                token_id, plaintext = store.create_token(args.name, args.role)
            except ValueError as exc:
                print(f"token: {exc}", file=sys.stderr)
                return 2
            store.audit("cli", "token.create", f"token:{token_id}", {"name": args.name, "role": args.role})
            print(f"token {token_id} ({args.name}, {args.role}) — shown once, keep it safe:", file=sys.stderr)
            print(plaintext)
        elif args.action == "list":
            for row in store.list_tokens():
                print(json.dumps(row, ensure_ascii=False))
        else:
            if not store.revoke_token(args.id):
                print(f"token: no active token with id {args.id}", file=sys.stderr)
                return 1
            store.audit("cli", "token.revoke", f"token:{args.id}")
            print(f"token {args.id} revoked")
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
