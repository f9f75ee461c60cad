"""ptm sftp serve|host-key --config FILE"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from ptm import logs
from ptm.console import say
from ptm.errors import DeliveryError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "sftp",
        help="the trusted third party's SFTP file service",
        description="Receive files that sites deliver straight to a trusted third party "
        "(tasks with deliver: {sftp: NAME}), so that they never enter the public registry.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="run the SFTP service until SIGINT or SIGTERM",
        description="Listen on the config's address; each account logs in with its public key "
        "only and sees only root/<account>/. Creates the host key on first start and prints "
        "its public line for the sites' sftp_targets.<name>.host_key. Logs to stderr. Stops "
        "cleanly on SIGINT or SIGTERM (exit 0).",
    )
    host_key = actions.add_parser(
        "host-key",
        help="print the service's public host key line (creating the key if missing)",
        description="Print the line sites put into sftp_targets.<name>.host_key.",
    )
    for action in (serve, host_key):
        action.add_argument("--config", type=Path, required=True, metavar="FILE")
    serve.add_argument("--log-format", choices=("text", "json"), default="text")
    serve.set_defaults(handler=run_serve)
    host_key.set_defaults(handler=run_host_key)


def run_serve(args: argparse.Namespace) -> int:
    # Imported here, as in run_host_key: paramiko is slow to import and only these need it.
    from ptm.sftp_config import load_sftp_config
    from ptm.sftp_server import SftpService

    config = load_sftp_config(args.config)
    logs.configure(log_format=args.log_format)
    # paramiko reports every client that hangs up abruptly as an error; ptm.sftp logs what matters
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    stop = threading.Event()
    with _stopped_by_signals(stop):
        service = SftpService(config)
        port = service.start()
        try:
            say(f"ptm sftp: listening on {replace(config, port=port).listen}")
            say(f"ptm sftp: host key {service.host_key.line}")
            while service.running and not stop.wait(1.0):
                pass
        finally:
            service.stop()
    if not stop.is_set():
        raise DeliveryError(f"the SFTP service on {config.listen} stopped unexpectedly")
    say("ptm sftp: stopped")
    return 0


def run_host_key(args: argparse.Namespace) -> int:
    from ptm.sftp_config import load_or_create_host_key, load_sftp_config
    from ptm.ssh_keys import PublicKey

    config = load_sftp_config(args.config)
    say(PublicKey.of(load_or_create_host_key(config.host_key)).line)
    return 0


@contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {number: signal.signal(number, request_stop) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
