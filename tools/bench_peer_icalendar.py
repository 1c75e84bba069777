#!/usr/bin/env python3
"""Peer figure for BENCHMARKS.md: Python's email + icalendar doing what imipd's extract does
(find the calendar parts of each corpus message, decode them, parse them) on the same corpus.

  python3 -m pip install icalendar
  python3 tools/bench_peer_icalendar.py [CORPUS_DIR] [SECONDS]
"""
import email
import email.policy
import os
import sys
import time

from icalendar import Calendar

corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus")
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
messages = []
for root, _, files in os.walk(corpus):
    for f in sorted(files):
        if f.endswith(".eml"):
            with open(os.path.join(root, f), "rb") as fh:
                messages.append(fh.read())


def extract(raw):
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    objects = 0
    for part in msg.walk():
        ctype = part.get_content_type()
        name = (part.get_filename() or "").lower()
        if ctype in ("text/calendar", "application/ics") or name.endswith(".ics"):
            data = part.get_payload(decode=True) or b""
            try:
                cal = Calendar.from_ical(data.decode("utf-8", "replace"))
                objects += sum(1 for c in cal.walk() if c.name in ("VEVENT", "VTODO", "VJOURNAL", "VFREEBUSY"))
            except Exception:
                pass
    return objects


rounds = 0
start = time.perf_counter()
while time.perf_counter() - start < seconds:
    for m in messages:
        extract(m)
    rounds += 1
elapsed = time.perf_counter() - start
per_round_ms = elapsed / rounds * 1000
print(f'{{"peer":"python email+icalendar","messages":{len(messages)},"rounds":{rounds},'
      f'"ms_per_corpus":{per_round_ms:.3f},"messages_per_second":{len(messages) * rounds / elapsed:.1f}}}')
