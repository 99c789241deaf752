"""``musicgen-onnx serve-keys``: make, revoke and list the API keys of ``musicgen-onnx serve --api-keys FILE``.

Only the key's SHA-256 goes into the file; ``add`` prints the key once, on stdout, and nowhere else.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .auth import KEYS_FILE_ENV, KeyFileError, add_key, load_keys, revoke_key


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="musicgen-onnx serve-keys",
        description="Manage the API keys file of `musicgen-onnx serve --api-keys FILE` (docs/design.md §22).",
    )
    p.add_argument(
        "--file",
        type=Path,
        default=os.environ.get(KEYS_FILE_ENV),
        help=f"the keys file (default: ${KEYS_FILE_ENV})",
    )
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add a key and print it (once: only its SHA-256 is stored)")
    add.add_argument("key_id", help="a name for the key, shown in logs instead of the key (e.g. alice)")
    add.add_argument("--rate-per-minute", type=float, help="requests per minute (default: the file's defaults)")
    add.add_argument("--burst", type=int, help="requests allowed at once before the rate applies")
    add.add_argument("--max-concurrent", type=int, help="generations in flight at once per replica")
    revoke = sub.add_parser("revoke", help="mark a key revoked (its requests get 403; replicas re-read the file)")
    revoke.add_argument("key_id")
    sub.add_parser("list", help="the key ids, their status and limits (no keys: they are not stored)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.file is None:
        print(f"musicgen-onnx serve-keys: give --file FILE or set {KEYS_FILE_ENV}", file=sys.stderr)
        return 2
    try:
        if args.action == "add":
            limits = {"rate_per_minute": args.rate_per_minute, "burst": args.burst}
            key = add_key(args.file, args.key_id, max_concurrent=args.max_concurrent, **limits)
            print(key)
            print(f"added {args.key_id!r} to {args.file}; the key above is shown only this once", file=sys.stderr)
        elif args.action == "revoke":
            revoke_key(args.file, args.key_id)
            print(f"revoked {args.key_id!r} in {args.file}", file=sys.stderr)
        else:
            for entry in load_keys(args.file).values():
                limits = entry.limits
                print(
                    f"{entry.key_id}\t{entry.status.value}\trate_per_minute={limits.rate_per_minute:g} "
                    f"burst={limits.burst} max_concurrent={limits.max_concurrent}"
                )
    except (KeyFileError, ValueError) as exc:
        print(f"musicgen-onnx serve-keys: {exc}", file=sys.stderr)
        return 2
    return 0
