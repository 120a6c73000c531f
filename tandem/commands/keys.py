"""``tandem keys``: make a ZeroMQ CURVE key pair for a hub or an edge."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``keys`` command."""
    parser = subparsers.add_parser("keys", help="generate a CURVE key pair (NAME.key public, NAME.key_secret secret)")
    parser.add_argument("name", help="file stem, e.g. hub or cam-01")
    parser.add_argument("--out", type=Path, default=Path("certs"), help="folder to write into (default: certs)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the key pair and say where it went."""
    from transport.zmq_channel import generate_keypair

    public, secret = generate_keypair(args.out, args.name)
    print(f"public key: {public}  (give this to the peers)")
    print(f"secret key: {secret}  (keep this on this machine only)")
    return 0
