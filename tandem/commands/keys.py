"""``tandem keys``: make a ZeroMQ CURVE key pair for a hub or an edge."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``keys`` command."""
    parser = subparsers.add_parser(
        "keys",
        help="generate a CURVE key pair (NAME.key public, NAME.key_secret secret)",
        description="Write a ZeroMQ CURVE key pair: NAME.key (public, give it to the peers) and "
        "NAME.key_secret (secret, readable by its owner only). Existing files are kept unless --overwrite.",
    )
    parser.add_argument("name", metavar="NAME", help="file stem, e.g. hub or cam-01 (a plain file name)")
    parser.add_argument("--out", type=Path, default=Path("certs"), help="folder to write into (default: certs)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing key pair of that NAME")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the key pair and say where it went; 2 for a bad NAME, 1 when the files exist or cannot be written."""
    from tandem.transport.zmq_channel import generate_keypair

    name: str = args.name
    if not name or Path(name).name != name or name in (".", ".."):
        return _fail(2, f"NAME {name!r} must be a plain file name such as hub or cam-01 (use --out for the folder)")
    if args.out.exists() and not args.out.is_dir():
        return _fail(1, f"--out {args.out} is a file; expected a folder to write the key pair into")
    existing = [p for p in (args.out / f"{name}.key", args.out / f"{name}.key_secret") if p.exists()]
    if existing and not args.overwrite:
        return _fail(1, f"{existing[0]} already exists; pass --overwrite to replace the pair, or choose another NAME")
    try:
        public, secret = generate_keypair(args.out, name, overwrite=args.overwrite)
    except OSError as exc:
        return _fail(1, f"--out {args.out}: cannot write the key pair: {exc.strerror or exc}")
    print(f"public key: {public}  (give this to the peers)")
    print(f"secret key: {secret}  (keep this on this machine only)")
    return 0


def _fail(code: int, message: str) -> int:
    print(f"tandem keys: error: {message}", file=sys.stderr)
    return code
