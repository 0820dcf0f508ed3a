#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# A minimal systemd-style socket activation launcher for tests: bind and
# listen on 127.0.0.1:PORT (or a Unix socket path), put the socket on fd
# 3, set LISTEN_FDS=1 and LISTEN_PID, and exec the server.  It execs in
# place instead of forking first: the pid does not change across exec, so
# LISTEN_PID = os.getpid() is the server's pid, and the test's $! and its
# signals reach the server itself.
#   socket-activate.py PORT|PATH COMMAND [ARGS...]

import os
import socket
import sys


def main():
    where, argv = sys.argv[1], sys.argv[2:]
    if not argv:
        sys.exit("usage: socket-activate.py PORT|PATH COMMAND [ARGS...]")
    if where.isdigit():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(where)))
    else:
        # Bound under another name and renamed once listening, so the
        # path never names a socket that refuses connections.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(where + ".tmp")
    s.listen(128)
    if not where.isdigit():
        os.rename(where + ".tmp", where)
    if s.fileno() != 3:
        os.dup2(s.fileno(), 3)
        s.close()
    os.set_inheritable(3, True)
    env = dict(os.environ)
    env["LISTEN_FDS"] = "1"
    env["LISTEN_PID"] = str(os.getpid())
    env["LISTEN_FDNAMES"] = "nbd"
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    main()
