#!/usr/bin/env python3
"""Validates every FHIR JSON file in a directory with an independent FHIR R4 model:
fhir.resources 6.4.0 (its R4 release; later releases model R4B and R5).

Usage: validate_fhir.py DIR
Fails when the directory holds no file, or when any file does not validate.
"""
import json
import pathlib
import sys

import fhir.resources
from fhir.resources import construct_fhir_element

if fhir.resources.__version__ != "6.4.0":
    sys.exit(f"fhir.resources {fhir.resources.__version__} is not the R4 release 6.4.0")

directory = pathlib.Path(sys.argv[1])
files = sorted(directory.glob("*.json"))
if not files:
    sys.exit(f"no FHIR files in {directory}: the test that writes them did not run")

passed, failed = 0, 0
for path in files:
    data = json.loads(path.read_text())
    try:
        resource = construct_fhir_element(data["resourceType"], data)
        # Round-trip: what the model read must be what the gateway wrote.
        again = json.loads(resource.json())
        if again.get("resourceType") != data["resourceType"]:
            raise ValueError("resourceType changed in the round trip")
        passed += 1
    except Exception as error:  # noqa: BLE001 - report every kind of validation failure
        failed += 1
        print(f"INVALID {path.name}: {str(error)[:2000]}")

print(f"fhir-r4: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
