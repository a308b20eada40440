#!/usr/bin/env python3
"""POST /events with X-Event-Id: each event is processed once; a retry gets
the first answer (Idempotent-Replayed: true), a retry while it runs 409
with Retry-After, another body under a used id 422. Usage: receiver.py PORT
(0: any free port; it prints the one it took)."""
import json
import math
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        event_id = self.headers.get("X-Event-Id")
        if not event_id:
            return self.answer(400, b"no X-Event-Id header\n")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        read_end, write_end = os.pipe()
        with open(read_end, "rb") as reports:
            result = subprocess.run(
                ["idem", "run", "--key", f"event-{event_id}", "--fingerprint-stdin",
                 "--report", f"/dev/fd/{write_end}", "--", "./process-event"],
                input=body, capture_output=True, pass_fds=(write_end,))
            os.close(write_end)
            report = json.load(reports)
        if report["outcome"] == "refused" and report["reason"] == "in_progress":
            headers = {}
            if report["retry_after_ms"] is not None:
                headers["Retry-After"] = str(math.ceil(report["retry_after_ms"] / 1000))
            return self.answer(409, b"this event is being processed\n", headers)
        if report["outcome"] == "refused" and report["reason"] == "mismatch":
            return self.answer(422, b"this event id came with another body\n")
        if result.returncode != 0:
            return self.answer(500, result.stderr)
        headers = {}
        if report["outcome"] in ("replayed", "joined"):
            headers["Idempotent-Replayed"] = "true"
        return self.answer(200, result.stdout, headers)

    def answer(self, status, body, headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver)
    print(f"listening on port {server.server_port}", flush=True)
    server.serve_forever()
