#!/usr/bin/env python3
"""Writes the worst-case message shapes that BENCHMARKS.md measures into a directory.

  tools/hostile_shapes.py DIR

uids.eml      4 parts x 50,000 UIDs (one calendar of many UIDs, many one-UID calendars)
zones.eml     2,000 VTIMEZONEs beside 2,000 objects in one calendar
fanout.eml    1,000 local recipients x 100 objects
big.eml       a 48 MB attachment beside one calendar (the size limit is 50 MiB)
"""
import os
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
head = ("From: <mallory@evil.example>\r\nTo: <bob@example.org>\r\nSubject: x\r\n"
        "Message-ID: <{}@evil.example>\r\nMIME-Version: 1.0\r\n")


def event(uid):
    return ("BEGIN:VEVENT\r\nUID:%s\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260110T100000Z\r\n"
            "ORGANIZER:mailto:mallory@evil.example\r\nATTENDEE:mailto:bob@example.org\r\nEND:VEVENT\r\n" % uid)


def tiny(uid):
    return "BEGIN:VEVENT\r\nUID:%s\r\nEND:VEVENT\r\n" % uid


def vcal(body, method="REQUEST"):
    return "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//x//EN\r\nMETHOD:%s\r\n%sEND:VCALENDAR\r\n" % (method, body)


def write(name, text):
    with open(os.path.join(out, name), "w") as f:
        f.write(text)


m = head.format("uids") + "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
for p in range(4):
    m += "--b\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\n"
    if p % 2 == 0:
        m += vcal("".join(tiny("u%d-%d" % (p, i)) for i in range(50000)))
    else:
        m += "".join("BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\n%sEND:VCALENDAR\r\n" % tiny("c%d-%d" % (p, i))
                     for i in range(50000))
m += "--b--\r\n"
write("uids.eml", m)

zones = "".join("BEGIN:VTIMEZONE\r\nTZID:Z%d\r\nBEGIN:STANDARD\r\nDTSTART:19700101T000000\r\n"
                "TZOFFSETFROM:+0100\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n" % i
                for i in range(2000))
write("zones.eml", head.format("zones") + "Content-Type: text/calendar; method=REQUEST\r\n\r\n"
      + vcal(zones + "".join(tiny("z%d" % i) for i in range(2000))))

to = ", ".join("u%d@example.org" % i for i in range(1000))
write("fanout.eml", head.format("fanout").replace("To: <bob@example.org>", "To: " + to)
      + "Content-Type: text/calendar; method=REQUEST\r\n\r\n"
      + "".join(vcal(event("f%d" % i)) for i in range(100)))

blob = ("QUJD" * 19) + "\r\n"
big = head.format("big") + "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
big += "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
big += blob * (48 * 1024 * 1024 // len(blob))
big += "--b\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\n" + vcal(event("big-1")) + "--b--\r\n"
write("big.eml", big)
