#!/usr/bin/env python3
"""Checks an exported audit trail (`gateway audit export`) with an RFC 8785 library that
the gateway did not write: Trail of Bits' `rfc8785` from PyPI.

Each record's hash must be SHA-256 over the JCS form of
{"event": ..., "prev_hash": ..., "seq": ...}; each record's prev_hash must be the hash of
the record before it (the first follows 64 zeros), and the sequence must run 1, 2, 3, ...

Usage: verify_audit_chain.py EXPORT.jsonl   (or - for standard input)
Prints "N records, chain intact, head H" and exits 0, or names the first broken record and
exits 1. Never prints the records' content (it holds patient data).
"""
import hashlib
import json
import sys

import rfc8785

GENESIS = "0" * 64


def main(path: str) -> int:
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    prev, expected_seq, count = GENESIS, 1, 0
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        seq = record["seq"]
        if seq != expected_seq:
            print(f"line {number}: record {seq} where {expected_seq} was expected")
            return 1
        if record["prev_hash"] != prev:
            print(f"record {seq} does not follow the record before it")
            return 1
        body = {"event": record["event"], "prev_hash": record["prev_hash"], "seq": seq}
        digest = hashlib.sha256(rfc8785.dumps(body)).hexdigest()
        if digest != record["hash"]:
            print(f"record {seq} does not match its hash (RFC 8785 gives {digest})")
            return 1
        prev, expected_seq, count = record["hash"], seq + 1, count + 1
    print(f"{count} records, chain intact, head {prev}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
