"""`aupguard logs verify|keygen`: check the record chain of record files; create a chain key.

Exit codes: 0 the chain is intact, 1 a problem (printed as `file:line: kind: message`),
2 bad input (no key, unreadable files), 3 intact but with records the writer declared lost
(a failed write; each printed as `file:line: lost: ...`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from agent.chain import ChainHead, generate_key, load_key, read_head, verify
from agent.cli import command

LOSSES = 3  # exit code: intact, but records were lost to failed writes (declared, not tampering)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=["verify", "keygen"],
        help="verify: check record files; keygen: create a chain key file",
    )
    p.add_argument(
        "files",
        nargs="+",
        type=Path,
        help="record files of one rotation set (verify) or the key file (keygen)",
    )
    p.add_argument("--key", type=Path, default=None, help="chain key file (hex, mode 0400)")
    p.add_argument(
        "--head",
        type=Path,
        default=None,
        help="collector output with shipped chain heads (detects a cut tail)",
    )


def _say(text: str, file: TextIO | None = None) -> None:
    (file or sys.stdout).write(text + "\n")


def _head(path: Path | None) -> ChainHead | None:
    if path is None:
        return None
    with path.open(encoding="utf-8", errors="replace") as f:
        head = read_head(f)
    if head is None:
        raise ValueError(f"{path}: no shipped chain head found")
    return head


@command("logs", "verify the tamper-evidence chain of record files", _args)
def cmd_logs(args: argparse.Namespace) -> int:
    """Verify record files (`logs verify --key K FILE...`) or create a key (`logs keygen FILE`)."""
    if args.action == "keygen":
        try:
            generate_key(args.files[0])
        except OSError as e:
            _say(f"aupguard logs keygen: {e}", file=sys.stderr)
            return 2
        _say(f"key written to {args.files[0]} (mode 0400); keep it off the record directory")
        return 0
    if args.key is None:
        _say("aupguard logs verify: --key is required", file=sys.stderr)
        return 2
    try:
        result = verify(args.files, load_key(args.key), _head(args.head))
    except (OSError, ValueError) as e:
        _say(f"aupguard logs verify: {e}", file=sys.stderr)
        return 2
    for loss in result.losses:
        _say(str(loss))
    if result.problem is not None:
        _say(str(result.problem))
        return 1
    last = result.last.seq if result.last else None
    lost = sum(loss.last - loss.first + 1 for loss in result.losses)
    _say(
        f"{'ok' if not lost else 'intact, with losses'}: {result.records} records in "
        f"{result.files} files, seq {result.first_seq}..{last}"
        + (" (reaches the shipped head)" if args.head else " (tail unchecked: no --head)")
        + (f"; {lost} records lost to failed writes, declared by the writer" if lost else "")
    )
    return LOSSES if lost else 0
