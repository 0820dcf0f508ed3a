# SPDX-License-Identifier: MIT
# A client that holds an export: connects to EXPORT on 127.0.0.1:PORT
# (GO), creates DIR/ready, waits (120 s at most) for DIR/go, then reads
# 64 KiB at 0, checks every byte is PATTERN, and ends.  Exit status 0
# when it read what it should.
#   exports-hold.py PORT EXPORT PATTERN DIR
import os
import sys
import time

import nbd

port, export, pattern, d = sys.argv[1], sys.argv[2], int(sys.argv[3], 0), \
    sys.argv[4]
h = nbd.NBD()
h.set_export_name(export)
h.connect_tcp("127.0.0.1", port)
open(os.path.join(d, "ready"), "w").close()
for _ in range(1200):
    if os.path.exists(os.path.join(d, "go")):
        break
    time.sleep(0.1)
else:
    sys.exit("never told to go on")
buf = h.pread(65536, 0)
if buf != bytes([pattern]) * 65536:
    sys.exit("%s: read the wrong bytes" % export)
h.shutdown()
