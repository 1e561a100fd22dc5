#!/usr/bin/env python3
"""Drives Vigil's MLLP listener with third-party HL7 clients and checks every ACK.

Each case is sent with the asyncio MLLP client of the `hl7` package over its own
connection. The ACK must carry the expected MSA-1 and echo the message's control id in
MSA-2, use the message's delimiters, and parse with both the `hl7` package and hl7apy
(tolerant, and with --require-strict also hl7apy's STRICT validation).

Usage: hl7_clients.py --host 127.0.0.1 --port 2575 cases.json [--require-strict]

cases.json: [{"name": ..., "message": "<HL7, segments separated by \\r>",
              "expect": "AA"|"CA"|"AE"|"AR", "control_id": ...,
              "reply": "ACK" (default) | "ORA"}, ...]

Prints one JSON line per case and exits 1 if any case failed (2 on bad usage).
Requires: pip install -r tests/requirements.txt (hl7, hl7apy).
"""

import argparse
import asyncio
import json
import sys
import traceback

try:
    import hl7
    import hl7.mllp
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message
except ImportError as e:  # pragma: no cover - environment problem, not a test failure
    print(
        f"hl7_clients.py: {e}; install with `python3 -m venv .venv && "
        ".venv/bin/pip install -r tests/requirements.txt`",
        file=sys.stderr,
    )
    sys.exit(2)

TIMEOUT = 10.0


class CaseFailure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CaseFailure(what)


def delimiters_of(text):
    """MSH + field separator + the four encoding characters, e.g. 'MSH|^~\\&'."""
    return text[:8]


async def exchange(host, port, message):
    """Sends one message with the hl7 package's asyncio client; returns the raw ACK text.

    HL7StreamWriter.writemessage() writes str(message), so the raw string is sent as is
    (no re-serialisation by hl7.parse that could mask what we meant to send).
    HL7StreamReader.readmessage() is readblock() + hl7.parse(); we call readblock()
    so the raw ACK text is kept for hl7apy, and parse it with hl7.parse below.
    """
    reader, writer = await asyncio.wait_for(
        hl7.mllp.open_hl7_connection(host, port), TIMEOUT
    )
    try:
        writer.writemessage(message)
        await asyncio.wait_for(writer.drain(), TIMEOUT)
        try:
            block = await asyncio.wait_for(reader.readblock(), TIMEOUT)
        except asyncio.IncompleteReadError as e:
            raise CaseFailure(f"connection closed without a complete ACK (got {e.partial!r})")
        except asyncio.TimeoutError:
            raise CaseFailure(f"no ACK within {TIMEOUT}s")
        return block.decode(reader.encoding, reader.encoding_errors)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def check_with_hl7(case, ack_text):
    ack = hl7.parse(ack_text)
    msa = ack.segment("MSA")
    msa1, msa2 = str(msa[1]), str(msa[2])
    check(msa1 == case["expect"], f"hl7: MSA-1 is {msa1!r}, expected {case['expect']!r}")
    check(msa2 == case["control_id"], f"hl7: MSA-2 is {msa2!r}, expected {case['control_id']!r}")
    msh9 = str(ack.segment("MSH")[9])
    # separators is "\r" + field + repetition + component + subcomponent.
    reply = case.get("reply", "ACK")  # an IHE PCD-04 ORU^R40 is answered ORA^R41
    check(msh9.split(ack.separators[3])[0] == reply, f"hl7: MSH-9 is {msh9!r}, not {reply}")
    return msa1, msa2


def check_with_hl7apy(case, ack_text, level):
    # hl7apy wants CR segment separators; the ACK should already have them.
    msg = parse_message(ack_text.replace("\n", "\r"), find_groups=False, validation_level=level)
    msa1, msa2 = msg.msa.msa_1.value, msg.msa.msa_2.value
    check(msa1 == case["expect"], f"hl7apy: MSA-1 is {msa1!r}, expected {case['expect']!r}")
    check(msa2 == case["control_id"], f"hl7apy: MSA-2 is {msa2!r}, expected {case['control_id']!r}")
    if level == VALIDATION_LEVEL.STRICT:
        # Raises ValidationError (with the offending element) when the ACK breaks the
        # version's message structure, cardinality or datatype rules.
        msg.validate()


async def run_case(host, port, case, require_strict):
    result = {"name": case["name"], "expect": case["expect"], "control_id": case["control_id"]}
    ack_text = None
    try:
        ack_text = await exchange(host, port, case["message"])
        result["ack"] = ack_text
        msa1, msa2 = check_with_hl7(case, ack_text)
        result["msa"] = [msa1, msa2]
        sent, got = delimiters_of(case["message"]), delimiters_of(ack_text)
        check(got == sent, f"ACK delimiters {got!r} differ from the message's {sent!r}")
        check_with_hl7apy(case, ack_text, VALIDATION_LEVEL.TOLERANT)
        result["hl7apy_tolerant"] = "ok"
        try:
            check_with_hl7apy(case, ack_text, VALIDATION_LEVEL.STRICT)
            result["hl7apy_strict"] = "ok"
        except CaseFailure:
            raise
        except Exception as e:  # hl7apy's ValidationError and friends
            result["hl7apy_strict"] = f"{type(e).__name__}: {e}"
            if require_strict:
                raise CaseFailure(f"hl7apy STRICT: {type(e).__name__}: {e}")
        result["ok"] = True
    except CaseFailure as e:
        result["ok"] = False
        result["error"] = str(e)
    except Exception as e:
        result["ok"] = False
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
    return result


async def main_async(args, cases):
    failed = []
    for case in cases:
        result = await run_case(args.host, args.port, case, args.require_strict)
        print(json.dumps(result), flush=True)
        if not result["ok"]:
            failed.append(result)
    for r in failed:
        print(
            f"FAIL {r['name']}: {r['error']}\n  ACK: {r.get('ack')!r}",
            file=sys.stderr,
        )
    print(f"{len(cases) - len(failed)}/{len(cases)} cases passed", file=sys.stderr)
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--require-strict", action="store_true",
                   help="fail a case whose ACK does not pass hl7apy STRICT validation")
    p.add_argument("cases", help="JSON file of cases")
    args = p.parse_args()
    with open(args.cases, encoding="utf-8") as f:
        cases = json.load(f)
    if not isinstance(cases, list) or not cases:
        print("hl7_clients.py: the cases file must hold a non-empty JSON list", file=sys.stderr)
        return 2
    for i, c in enumerate(cases):
        missing = {"name", "message", "expect", "control_id"} - set(c)
        if missing:
            print(f"hl7_clients.py: case {i} lacks {sorted(missing)}", file=sys.stderr)
            return 2
    return asyncio.run(main_async(args, cases))


if __name__ == "__main__":
    sys.exit(main())
