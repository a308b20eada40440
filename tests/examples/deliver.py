#!/usr/bin/env python3
"""Hands one event to idem and reads its report. Usage: deliver.py ID < body"""
import json
import os
import subprocess
import sys


def deliver(event_id, payload):
    """Runs ./process-event at most once per event id; returns (result, report)."""
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as reports:
        result = subprocess.run(
            ["idem", "run", "--key", f"event-{event_id}", "--fingerprint-stdin",
             "--report", f"/dev/fd/{write_end}", "--", "./process-event"],
            input=payload, capture_output=True, pass_fds=(write_end,))
        os.close(write_end)
        report = json.load(reports)
    return result, report


if __name__ == "__main__":
    result, report = deliver(sys.argv[1], sys.stdin.buffer.read())
    sys.stdout.buffer.write(result.stdout)
    print(f"outcome: {report['outcome']}, exit status {result.returncode}")
    sys.exit(result.returncode)
