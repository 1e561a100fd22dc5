#!/usr/bin/env python3
"""Device alarms as a FHIR R4 gateway sends them, built on the `fhir.resources` models (R4B):
driven by tests/it/devices.rs, which posts them beside the equivalent IHE PCD-04 ORU^R40.

FHIR R4 has no alarm resource (DeviceAlert is an R6 draft), and the Point-of-Care Device IG
profiles measurements only. A gateway bridging IHE ACM to R4 sends each alarm report as one
Observation shaped like the PCD-04 OBR group it comes from: `code` the alarm event in the MDC
alerts-and-events partition, `identifier` the alarm's identity at the source, `device` the
source (EUI-64), a component per alarm facet under the same MDC codes as the OBX rows
(68481 phase, 68482 state, 68483 inactivation, 68484 priority, 68485 kind), and a component
with the value that caused it.

Reads a JSON list of alarm reports on stdin ({alarm, event, display, phase, priority, kind,
value?}) and prints the JSON list of validated Observations. Synthetic data only.
"""

import argparse
import datetime
import json
import sys

from fhir.resources.R4B.observation import Observation

MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
EUI64 = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
FACETS = [
    ("68481", "MDC_ATTR_EVT_PHASE", "phase"),
    ("68482", "MDC_ATTR_ALARM_STATE", "state"),
    ("68484", "MDC_ATTR_ALARM_PRIORITY", "priority"),
    ("68485", "MDC_ATTR_ALERT_TYPE", "kind"),
]


def alarm(report, system, mrn, device, now):
    components = [
        {"code": {"coding": [{"system": MDC, "code": code, "display": display}]}, "valueString": report[field]}
        for code, display, field in FACETS
        if report.get(field)
    ]
    if "value" in report:
        value, unit = report["value"]
        components.append({
            "code": {"coding": [{"system": MDC, "code": "150456", "display": "MDC_PULS_OXIM_SAT_O2"}]},
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        })
    return Observation.model_validate({
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": f"urn:acm:alarm:{device}", "value": report["alarm"]}],
        "code": {"coding": [{"system": MDC, "code": report["event"], "display": report["display"]}]},
        "subject": {"identifier": {"system": system, "value": mrn}},
        "effectiveDateTime": now,
        "device": {"identifier": {"system": EUI64, "value": device}},
        "component": components,
    })


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--system", required=True)
    p.add_argument("--mrn", required=True)
    p.add_argument("--device", required=True)
    a = p.parse_args()
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    reports = json.load(sys.stdin)
    out = [json.loads(alarm(r, a.system, a.mrn, a.device, now).model_dump_json(exclude_none=True)) for r in reports]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
