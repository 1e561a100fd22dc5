#!/usr/bin/env python3
"""A FHIR client built on the `fhir.resources` models (R4B, the R4-compatible release the
package ships) against a running Vigil: driven by tests/it/fhir.rs.

It builds the vitals of a deteriorating patient as Observations (a blood-pressure panel with
components, MDC and LOINC codes, an EUI-64 device) in a transaction Bundle, posts them, and
validates every answer with the models: the CapabilityStatement, the transaction-response
Bundle, and each OperationOutcome the server returns for bad input (whose severity and issue
type are also checked against the R4 value sets, which the models leave open). Prints one
JSON object with what it saw; exits non-zero on the first answer that does not validate.

Synthetic data only.
"""

import argparse
import datetime
import json
import sys
import urllib.error
import urllib.request

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome

MDC = "urn:iso:std:iso:11073:10101"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
EUI64 = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
SEVERITIES = {"fatal", "error", "warning", "information"}
ISSUE_TYPES = {
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown", "expired",
    "forbidden", "suppressed", "processing", "not-supported", "duplicate", "multiple-matches", "not-found",
    "deleted", "too-long", "code-invalid", "extension", "too-costly", "business-rule", "conflict", "transient",
    "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled", "informational",
}


def request(base, path, token, body=None, content_type="application/fhir+json", method=None, headers=None):
    data = body if isinstance(body, (bytes, type(None))) else body.encode()
    req = urllib.request.Request(base + path, data=data, method=method or ("POST" if data is not None else "GET"))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", content_type)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def outcome(status, headers, text, want_status, name):
    """Validate an OperationOutcome answer; return its first issue's expression."""
    if status != want_status:
        raise SystemExit(f"{name}: status {status}, want {want_status}: {text}")
    if not headers.get("Content-Type", "").startswith("application/fhir+json"):
        raise SystemExit(f"{name}: content type {headers.get('Content-Type')}")
    oo = OperationOutcome.model_validate(json.loads(text))
    for issue in oo.issue:
        if issue.severity not in SEVERITIES or issue.code not in ISSUE_TYPES:
            raise SystemExit(f"{name}: issue {issue.severity}/{issue.code} outside the R4 value sets")
    return (oo.issue[0].expression or [""])[0]


def quantity(value, unit):
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def vitals(system, mrn, now):
    subject = {"identifier": {"system": system, "value": mrn}}
    device = {"identifier": {"system": EUI64, "value": "71-10-00-FE-FF-5F-49-B0"}}
    at = now.isoformat(timespec="seconds")

    def obs(mdc, loinc, **rest):
        coding = [{"system": MDC, "code": mdc}] + ([{"system": LOINC, "code": loinc}] if loinc else [])
        return Observation.model_validate({
            "resourceType": "Observation", "status": "final", "subject": subject, "device": device,
            "effectiveDateTime": at, "code": {"coding": coding},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            **rest,
        })

    return [
        obs("151562", "9279-1", valueQuantity=quantity(26, "/min")),
        obs("147842", "8867-4", valueQuantity=quantity(118, "/min")),
        obs("150020", "85354-9", component=[
            {"code": {"coding": [{"system": MDC, "code": "150021"}, {"system": LOINC, "code": "8480-6"}]},
             "valueQuantity": quantity(92, "mm[Hg]")},
            {"code": {"coding": [{"system": MDC, "code": "150022"}, {"system": LOINC, "code": "8462-4"}]},
             "valueQuantity": quantity(60, "mm[Hg]")},
        ]),
    ]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True, help="http://host:port/fhir")
    p.add_argument("--token", required=True)
    p.add_argument("--system", required=True)
    p.add_argument("--mrn", required=True)
    a = p.parse_args()
    seen = {}

    status, headers, text = request(a.base, "/metadata", None)
    if status != 200:
        raise SystemExit(f"metadata: {status} {text}")
    cs = CapabilityStatement.model_validate(json.loads(text))
    seen["capability_types"] = [r.type for r in cs.rest[0].resource]

    now = datetime.datetime.now(datetime.timezone.utc)
    entries = [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{i}", "resource": json.loads(o.model_dump_json(exclude_none=True)),
                "request": {"method": "POST", "url": "Observation"}} for i, o in enumerate(vitals(a.system, a.mrn, now))]
    bundle = Bundle.model_validate({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    status, headers, text = request(a.base, "", a.token, bundle.model_dump_json(exclude_none=True))
    if status != 200:
        raise SystemExit(f"transaction: {status} {text}")
    response = Bundle.model_validate(json.loads(text))
    seen["transaction"] = [e.response.status for e in response.entry]

    obs = json.loads(vitals(a.system, a.mrn, now)[0].model_dump_json(exclude_none=True))
    bad = dict(obs)
    del bad["status"]
    seen["missing_status"] = outcome(*request(a.base, "/Observation", a.token, json.dumps(bad)), 400, "missing status")
    unknown = dict(obs, subject={"identifier": {"system": "http://unknown.example.org/ids", "value": a.mrn}})
    seen["unknown_subject"] = outcome(*request(a.base, "/Observation", a.token, json.dumps(unknown)), 422, "unknown subject")
    wrong_unit = dict(obs, valueQuantity=quantity(26, "kg"))
    seen["wrong_unit"] = outcome(*request(a.base, "/Observation", a.token, json.dumps(wrong_unit)), 422, "wrong unit")
    seen["not_json"] = outcome(*request(a.base, "/Observation", a.token, "{not json"), 400, "not json")
    seen["too_deep"] = outcome(*request(a.base, "/Observation", a.token, "[" * 200 + "]" * 200), 413, "too deep")
    seen["unsupported_type"] = outcome(*request(a.base, "/Specimen", a.token, "{}"), 404, "unsupported type")
    seen["media_type"] = outcome(*request(a.base, "/Observation", a.token, json.dumps(obs), "text/plain"), 415, "media")
    seen["no_token"] = outcome(*request(a.base, "/Observation", None, json.dumps(obs)), 401, "no token")
    print(json.dumps(seen))


if __name__ == "__main__":
    sys.exit(main())
