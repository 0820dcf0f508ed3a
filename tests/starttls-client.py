#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# A raw client that negotiates NBD_OPT_STARTTLS and then misbehaves, for
# the TLS refusal tests:
#   starttls-client.py PORT silent     say nothing after the ACK
#   starttls-client.py PORT plaintext  send an option in clear where the
#                                      ClientHello belongs
# Either way the server must drop the connection (at most a TLS alert,
# then EOF).  Prints "dropped cleanly" and exits 1 (what the tests'
# "refused" helper expects of a refused client) when it did; anything
# else is reported and exits with a message.
import socket
import struct
import sys

NBD_MAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3e889045565a9
OPT_LIST, OPT_STARTTLS = 3, 5
REP_ACK = 1
TLS_ALERT = 21                  # TLS record content type

port, mode = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=30)


def recv_exact(n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise SystemExit("EOF during the handshake")
        b += d
    return b


magic, opt, _flags = struct.unpack(">QQH", recv_exact(18))
assert magic == NBD_MAGIC and opt == IHAVEOPT, "bad greeting"
s.sendall(struct.pack(">I", 1))                         # FIXED_NEWSTYLE
s.sendall(struct.pack(">QII", IHAVEOPT, OPT_STARTTLS, 0))
rmagic, ropt, rtype, rlen = struct.unpack(">QIII", recv_exact(20))
assert rmagic == REP_MAGIC and ropt == OPT_STARTTLS, "bad reply"
assert rtype == REP_ACK and rlen == 0, "STARTTLS not ACKed: %#x" % rtype

if mode == "plaintext":
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_LIST, 0))
elif mode != "silent":
    raise SystemExit("unknown mode %r" % mode)

rest = b""
try:
    while True:
        d = s.recv(4096)
        if not d:
            break
        rest += d
except ConnectionResetError:
    pass
if rest and rest[0] != TLS_ALERT:
    raise SystemExit("unexpected bytes after STARTTLS: %r" % rest[:32])
print("dropped cleanly")
sys.exit(1)
