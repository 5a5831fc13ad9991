#!/usr/bin/env python3
"""Baseline for the acme.json ingest benchmark (see BENCHMARKS.md).

The least a script can do to get a certificate out of a Traefik acme.json:
json.load the file, take the entry whose domain.main equals TARGET (the last
one if there are several, as every entry is looked at anyway), base64-decode
its certificate and key, print their lengths. It validates nothing: no PEM,
no X.509, no expiry, no key match, no names beyond `main`.

usage: acme_ingest_baseline.py ACME_JSON TARGET
"""

import base64
import json
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    path, target = sys.argv[1], sys.argv[2]
    with open(path, "rb") as f:
        data = json.load(f)
    found = None
    for resolver in data.values():
        for entry in resolver.get("Certificates") or ():
            if entry["domain"]["main"] == target:
                found = entry
    if found is None:
        print(f"{target}: not found", file=sys.stderr)
        return 1
    cert = base64.b64decode(found["certificate"])
    key = base64.b64decode(found["key"])
    print(len(cert), len(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
