#!/usr/bin/env python3
"""Every reference in every Bundle the integration tests wrote must point inside the Bundle
(an entry's fullUrl), at the gateway that answered (its FHIR base, read from the Bundle's
`self` link), or be the Bundle's own (`#contained`, `urn:`). Entries' fullUrls must be at the
gateway too. The integration tests follow such references on the live gateways
(`follow_references` in tests/common.rs); this checks every Bundle they saved, whichever test
saved it. Exits 1 on the first directory with a reference pointing elsewhere."""
import glob
import json
import os
import sys


def references(value, out):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                out.append(item)
            else:
                references(item, out)
    elif isinstance(value, list):
        for item in value:
            references(item, out)
    return out


def main(directory):
    checked, failures = 0, []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        bundle = json.load(open(path))
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "searchset":
            continue
        entries = bundle.get("entry", [])
        matches = [e for e in entries if e.get("search", {}).get("mode") == "match"]
        if matches and all(e.get("resource", {}).get("resourceType") == "AuditEvent" for e in matches):
            # The audit trail (at /admin/audit) names agents and entities, not resources to follow.
            continue
        self_link = next((l["url"] for l in bundle.get("link", []) if l.get("relation") == "self"), "")
        if "/fhir" not in self_link:
            failures.append(f"{path}: no self link at a FHIR base")
            continue
        base = self_link.split("/fhir", 1)[0] + "/fhir/"
        urls = {e.get("fullUrl") for e in entries}
        for url in urls:
            if not (url.startswith(base) or url.startswith("urn:uuid:")):
                failures.append(f"{path}: fullUrl {url} is not at the gateway")
        for ref in references(bundle, []):
            checked += 1
            if ref in urls or ref.startswith("#") or ref.startswith("urn:") or ref.startswith(base):
                continue
            failures.append(f"{path}: reference {ref} points outside the gateway")
    for f in failures[:20]:
        print(f)
    print(f"references: {checked} checked, {len(failures)} pointing elsewhere")
    return 1 if failures or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
