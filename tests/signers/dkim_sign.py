#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Test fixture helper: DKIM keys and signatures made by dkimpy, independently of imipd.

  dkim_sign.py ed25519-keygen PRIVATE_FILE      prints the public key (base64) for p=
  dkim_sign.py sign SELECTOR DOMAIN KEYFILE [--alg rsa-sha256|ed25519-sha256]
               [--length] [--expired] [--canon relaxed|simple] [--headers h1,h2,...]
                                                signs stdin, writes the signed message
  dkim_sign.py verify RECORD                    verifies stdin with RECORD as the only key;
                                                prints pass or fail
  dkim_sign.py sign-many SELECTOR DOMAIN KEYFILE N OUTDIR [--alg ...]
                                                signs N variants of stdin ({n} replaced)

--expired signs with t= two hours and x= one hour in the past. dkimpy has no option for
x=, so the tag is added to the fields dkimpy signs: the signature itself stays dkimpy's.
"""

import base64
import sys
import time

import dkim


def keygen_ed25519(private_file):
    import nacl.signing

    key = nacl.signing.SigningKey.generate()
    with open(private_file, "wb") as f:
        f.write(base64.b64encode(bytes(key)))
    print(base64.b64encode(bytes(key.verify_key)).decode())


def sign(args):
    selector, domain, keyfile = args[0], args[1], args[2]
    alg = b"rsa-sha256"
    length = "--length" in args
    expired = "--expired" in args
    if "--alg" in args:
        alg = args[args.index("--alg") + 1].encode()
    canon = b"relaxed" if "--canon" in args and args[args.index("--canon") + 1] == "relaxed" else b"simple"
    headers = None
    if "--headers" in args:
        headers = [h.encode() for h in args[args.index("--headers") + 1].split(",")]
    with open(keyfile, "rb") as f:
        key = f.read()
    message = sys.stdin.buffer.read()

    if headers is not None and b"from" not in headers:
        # dkimpy refuses to leave From unsigned (RFC 6376 §5.4); a verifier must cope with a
        # signer that does anyway, so drop it from h= and from what is hashed, after the check.
        headers = headers + [b"from"]
        original_gen = dkim.DKIM.gen_header

        def gen_header_without_from(self, fields, include_headers, *rest, **kw):
            kept = tuple(h for h in include_headers if h != b"from")
            fields = [(k, b" : ".join(kept) if k == b"h" else v) for k, v in fields]
            return original_gen(self, fields, kept, *rest, **kw)

        dkim.DKIM.gen_header = gen_header_without_from

    if expired:
        now = int(time.time())
        original = dkim.DKIM.gen_header

        def gen_header(self, fields, *rest, **kw):
            fields = [(k, str(now - 7200).encode() if k == b"t" else v) for k, v in fields]
            fields.insert([k for k, _ in fields].index(b"h"), (b"x", str(now - 3600).encode()))
            return original(self, fields, *rest, **kw)

        dkim.DKIM.gen_header = gen_header

    signature = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key,
        signature_algorithm=alg,
        length=length,
        canonicalize=(canon, canon),
        include_headers=headers,
    )
    sys.stdout.buffer.write(signature + message)


def verify(args):
    record = args[0].encode()
    message = sys.stdin.buffer.read()
    ok = dkim.verify(message, dnsfunc=lambda name, timeout=5: record)
    print("pass" if ok else "fail")


def sign_many(args):
    """Signs N variants of the template on stdin ("{n}" replaced by 0..N-1) into OUTDIR."""
    import os

    selector, domain, keyfile, count, outdir = args[0], args[1], args[2], int(args[3]), args[4]
    alg = b"rsa-sha256"
    if "--alg" in args:
        alg = args[args.index("--alg") + 1].encode()
    with open(keyfile, "rb") as f:
        key = f.read()
    template = sys.stdin.buffer.read()
    os.makedirs(outdir, exist_ok=True)
    for n in range(count):
        message = template.replace(b"{n}", str(n).encode())
        signature = dkim.sign(message, selector.encode(), domain.encode(), key, signature_algorithm=alg)
        with open(os.path.join(outdir, "%06d.eml" % n), "wb") as f:
            f.write(signature + message)


if __name__ == "__main__":
    if sys.argv[1] == "ed25519-keygen":
        keygen_ed25519(sys.argv[2])
    elif sys.argv[1] == "sign":
        sign(sys.argv[2:])
    elif sys.argv[1] == "verify":
        verify(sys.argv[2:])
    elif sys.argv[1] == "sign-many":
        sign_many(sys.argv[2:])
    else:
        sys.exit("unknown command " + sys.argv[1])
