#!/usr/bin/env python3
"""A SMART on FHIR client library from PyPI (fhirclient, by SMART Health IT) discovering the
gateway: it reads the CapabilityStatement's SMART security extension for the authorize and
token endpoints, then, given a token, searches the patient's Observations through the
library's own request path.

Usage: smart_client.py FHIR_BASE NHS_NUMBER   (token in GATEWAY_TOKEN; REQUESTS_CA_BUNDLE
trusts the gateway's CA). Prints one JSON object: what was discovered and what came back.
"""
import json
import os
import sys

from fhirclient import client

base, nhs = sys.argv[1], sys.argv[2]
smart = client.FHIRClient(settings={"app_id": "gateway-test", "api_base": base})
smart.prepare()  # reads /metadata: the server's SMART security extension
auth = smart.server.auth
token_uri = getattr(auth, "_token_uri", None)
authorize_uri = getattr(auth, "_authorize_uri", None)
auth.access_token = os.environ["GATEWAY_TOKEN"]
bundle = smart.server.request_json(
    f"Observation?patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"
)
print(json.dumps({
    "auth_type": getattr(auth, "auth_type", None),
    "token_uri": token_uri,
    "authorize_uri": authorize_uri,
    "bundle_type": bundle.get("type"),
    "entries": len(bundle.get("entry", [])),
}))
