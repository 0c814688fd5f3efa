"""The ``ebc`` command line: one entry point for the daemon, the simulator and tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from controller.config import Config, ConfigError, load_config

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"


def run_until_signalled(coro: Coroutine[Any, Any, object]) -> int:
    """Run a long-lived coroutine; SIGINT/SIGTERM cancel it so its cleanup runs (links, devices)."""

    async def main() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.errors)} error(s)", file=sys.stderr)
        for err in exc.errors:
            print(f"  - {err}", file=sys.stderr)
        return 1
    lines = ", ".join(f"{line.id} ({line.type})" for line in cfg.lines)
    print(f"{args.file}: OK — gateway {cfg.gateway.id} ({cfg.gateway.name}), "
          f"{len(cfg.devices)} devices on {len(cfg.lines)} lines: {lines}")
    return 0


def _load_or_exit(path: str | Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(1) from None


def _cmd_sim(args: argparse.Namespace) -> int:
    from controller.app.simulation import spec_from_config
    from simulator.runner import run_simulation

    spec = spec_from_config(_load_or_exit(args.config))
    lifeline = sys.stdin.fileno() if args.exit_on_stdin_eof else None
    return run_until_signalled(run_simulation(spec, lifeline_fd=lifeline))


def _cmd_demo(args: argparse.Namespace) -> int:
    from controller.app.demo import run_demo

    return run_until_signalled(run_demo(_load_or_exit(args.config)))


def _cmd_run(args: argparse.Namespace) -> int:
    from controller.app.daemon import run_daemon
    from controller.app.logs import setup_logging

    setup_logging(args.log_format, verbose=args.verbose)
    asyncio.run(run_daemon(_load_or_exit(args.config)))
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from controller.app.tokens import token_command

    return token_command(args, _load_or_exit(args.config))


def _cmd_say(args: argparse.Namespace) -> int:
    from controller.speech.tts import say_command

    cfg = _load_or_exit(args.config) if args.config else None
    return say_command(args.text, args.lang, Path(args.output), cfg)


def _cmd_platform_codes(args: argparse.Namespace) -> int:
    from controller.app.national import propose_codes

    print(propose_codes(_load_or_exit(args.config), type_code=args.type_code))
    return 0


def _cmd_platform_keygen(args: argparse.Namespace) -> int:
    from controller.app.national import write_keypair

    try:
        print(write_keypair(Path(args.out)))
    except FileExistsError:
        print(f"ebc platform keygen: {args.out} exists; a key is never overwritten (move it away first)",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ebc platform keygen: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _cmd_platform_sim(args: argparse.Namespace) -> int:
    from simulator.platform_sim import main as platform_sim_main

    return platform_sim_main(args.sim_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebc", description="Township emergency-broadcast gateway")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sim", help="run the hardware simulator alone")
    p.add_argument("--config", required=True, help="gateway config with a simulator section")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="also stop (cleanly) when standard input reaches end-of-file: a starter that "
                        "holds a pipe to it open takes the simulator with it however it ends (ebc demo)")
    p.set_defaults(func=_cmd_sim)

    p = sub.add_parser("run", help="run the gateway daemon")
    p.add_argument("--config", required=True, help="gateway config file")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="text (default) or one JSON object per line")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("token", help="API tokens: create (printed once), list, revoke")
    tsub = p.add_subparsers(dest="token_command", required=True)
    t = tsub.add_parser("create", help="create a token; it is printed once, only its hash is stored")
    t.add_argument("name")
    t.add_argument("--role", required=True, choices=["viewer", "operator", "admin", "feed"],
                   help="feed: may only post CAP alerts (a warning centre's push client)")
    t.add_argument("--config", required=True)
    t = tsub.add_parser("list", help="list active tokens (names, roles, ids)")
    t.add_argument("--config", required=True)
    t = tsub.add_parser("revoke", help="revoke a token by name")
    t.add_argument("name")
    t.add_argument("--config", required=True)
    p.set_defaults(func=_cmd_token)

    p = sub.add_parser("say", help="speak a text into a WAV file (the gateway's voice and normalisation)")
    p.add_argument("text")
    p.add_argument("--lang", choices=["zh", "en"], default="zh", help="zh (Mandarin, default) or en")
    p.add_argument("-o", "--output", required=True, help="WAV file to write")
    p.add_argument("--config", help="use this gateway's speech settings and cache "
                   "(default: ~/.cache/ebc/speech)")
    p.set_defaults(func=_cmd_say)

    p = sub.add_parser("demo", help="simulator + daemon on config/demo.yaml, API on :8080, fresh admin token")
    p.add_argument("--config", default=str(DEMO_CONFIG), help="config file (default: the demo township)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    p = sub.add_parser("platform", help="national platform interface tools (docs/national-platform.md)")
    psub = p.add_subparsers(dest="platform_command", required=True)
    n = psub.add_parser("codes", help="propose 23-digit EBRIDs for the gateway and every device without one")
    n.add_argument("--config", required=True)
    n.add_argument("--type-code", default="0314", help="4-digit resource type field (default 0314)")
    n.set_defaults(func=_cmd_platform_codes)
    n = psub.add_parser("keygen", help="make an SM2 key pair: the private key to a file (0600), the "
                                        "public key printed for the platform")
    n.add_argument("--out", required=True, help="private key file to write (refuses to overwrite)")
    n.set_defaults(func=_cmd_platform_keygen)
    sub.add_parser("county", help="the county centre: run, token, keygen (county/cli.py; docs/county.md)",
                   add_help=False)
    sub.add_parser("fleet-sim", help="N virtual gateways speaking docs/mqtt.md (simulator/fleet.py)",
                   add_help=False)
    p = sub.add_parser("platform-sim", help="a stand-in of the county platform (simulator/platform_sim.py)",
                       add_help=False)
    p.add_argument("sim_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_platform_sim)

    c = csub.add_parser("check", help="validate a config file and print every error with its key path")
    c.add_argument("file")
    c.set_defaults(func=_cmd_config_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["platform-sim"]:  # its own parser, --help included
        from simulator.platform_sim import main as platform_sim_main

        return platform_sim_main(argv[1:])
    if argv[:2] == ["county", "demo"]:
        from county.demo import main as county_demo_main

        return county_demo_main(argv[2:])
    if argv[:1] == ["county"]:  # the county centre (county/), a separate service with its own CLI
        from county.cli import main as county_main

        return county_main(argv[1:])
    if argv[:1] == ["fleet-sim"]:  # virtual gateways for the county centre's tests and benches
        from simulator.fleet import main as fleet_main

        return fleet_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
