#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Test fixture helper: DKIM keys and signatures made by dkimpy, independently of imipd.

  dkim_sign.py ed25519-keygen PRIVATE_FILE      prints the public key (base64) for p=
  dkim_sign.py sign SELECTOR DOMAIN KEYFILE [--alg rsa-sha256|ed25519-sha256]
               [--length] [--expired]           signs stdin, writes the signed message
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
    with open(keyfile, "rb") as f:
        key = f.read()
    message = sys.stdin.buffer.read()

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
    )
    sys.stdout.buffer.write(signature + message)


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
    elif sys.argv[1] == "sign-many":
        sign_many(sys.argv[2:])
    else:
        sys.exit("unknown command " + sys.argv[1])
