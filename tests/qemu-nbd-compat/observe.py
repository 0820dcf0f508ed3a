# SPDX-License-Identifier: MIT
"""What runner.py does with one side (oracle or candidate) of one corpus
pattern: start qemu-nbd as the pattern says, be its clients, stop it, and
return a flat dict of observations ("key": JSON value) to compare with
the other side's.  Keys name what a client or script sees: the handshake
(info.*), contents (read.*), block status (map.*), effects of writes
(write.*, image.*), readiness (ready.*), lifecycle (exit, stop.*,
second, shared.*) and files left behind (left.*); stderr lines under
*stderr keys (compared with the prefix rule in runner.py).

No observation is a duration: every wait is bounded by WAIT seconds and
its outcome (happened / did not happen within the bound) is what is
recorded.  The only short wait is the 3 s look for a greeting a client
beyond --shared must not get; a late greeting there can only hide a
difference, never invent one when both sides withhold it."""

import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import time

import nbd

WAIT = 30
TAR_OFFSET = 65536
ORACLE = "/usr/bin/qemu-nbd"


# ---- small helpers --------------------------------------------------------

def wait_until(cond, limit=WAIT, step=0.02):
    end = time.monotonic() + limit
    while True:
        if cond():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(step)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def err(e):
    """An nbd.Error as a client sees it: the errno name, not the text
    (libnbd's text carries paths and is not the server's doing)."""
    if isinstance(e, nbd.Error):
        return f"error: {e.errno or 'no errno'}"
    return f"error: {type(e).__name__}"


def lines(text):
    return [l.rstrip() for l in text.splitlines() if l.strip()]


def has_opt(args, *names):
    return any(a in names or any(a.startswith(n + "=") for n in names
                                 if n.startswith("--"))
               for a in args)


def image_format(p):
    img = p.get("image")
    if img in ("qcow2", "chain", "empty-qcow2"):
        return "qcow2"
    if img in ("raw", "odd-raw", "tar"):
        return "raw"
    return None


def skip_reason(p):
    text = json.dumps(p)
    for tool in ("nbdkit", "nbddump"):
        if tool in text and not shutil_which(tool):
            return f"{tool} is not installed"
    if p.get("fixed_port"):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", p["fixed_port"]))
        except OSError:
            return f"port {p['fixed_port']} is in use here"
        finally:
            s.close()
    return None


def shutil_which(tool):
    import shutil
    return shutil.which(tool)


def find_pids(side):
    """Processes started for this side (a forked qemu-nbd, a server
    libnbd spawned): their command lines name the side's directory."""
    pids = []
    mine = {os.getpid()} | set(getattr(side, "hold_pids", []))
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in mine:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if side.dir in cmd and alive(int(d)):
            pids.append(int(d))
    return pids


def kill_leftovers(side):
    for proc in getattr(side, "procs", []):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pids = find_pids(side) + list(getattr(side, "hold_pids", []))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    # Gone, not just signalled: the image lock goes with the process.
    wait_until(lambda: not any(alive(p) for p in pids))
    for s in getattr(side, "hold_socks", []):
        s.close()


def spawn(side, argv, name, **kw):
    out = open(f"{side.dir}/{name}.out", "w")
    errf = open(f"{side.dir}/{name}.err", "w")
    proc = subprocess.Popen(argv, stdin=kw.pop("stdin", subprocess.DEVNULL),
                            stdout=out, stderr=errf, env=side.env(),
                            cwd=side.dir, **kw)
    side.procs = getattr(side, "procs", []) + [proc]
    return proc


def read_lines(side, name, ext):
    try:
        with open(f"{side.dir}/{name}.{ext}", errors="replace") as f:
            return lines(f.read())
    except OSError:
        return []


def run_client(side, argv, obs, key):
    """A real client command from the source; what it prints is what a
    script would parse."""
    try:
        r = subprocess.run(side.argv(argv), capture_output=True, text=True,
                           timeout=WAIT * 2, env=side.env(), cwd=side.dir,
                           stdin=subprocess.DEVNULL)
        obs[f"{key}.exit"] = r.returncode
        obs[f"{key}.stdout"] = lines(r.stdout)
        obs[f"{key}.stderr"] = lines(r.stderr)
    except subprocess.TimeoutExpired:
        obs[f"{key}.exit"] = f"still running after {WAIT * 2} s"


# ---- the built-in client (libnbd) -----------------------------------------

def close(h):
    """Close a handle now (python3-libnbd 1.14 closes only in __del__):
    the server sees the disconnect at a known point."""
    if hasattr(h, "_o"):
        h.__del__()
        del h._o


def handle(side):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.set_full_info(True)
    h.set_export_name(side.pattern.get("export", ""))
    tls = side.pattern.get("tls")
    if tls:
        h.set_tls(nbd.TLS_REQUIRE)
        # The server is what is under test, not its certificate's names.
        h.set_tls_verify_peer(False)
        if tls == "x509":
            h.set_tls_certificates(side.subst["@PKI@"])
        else:
            h.set_tls_psk_file(side.subst["@PSK@"] + "/keys.psk")
            h.set_tls_username("qemu")
    return h


def connect(side, h, limit=WAIT, activation=None):
    """Connect (or start the server with socket activation, argv in
    activation) and wait (limit seconds at most) for the handshake to
    reach option negotiation: a server that never greets cannot hang us."""
    if activation:
        h.aio_connect_systemd_socket_activation(activation)
    elif side.uri().startswith("nbd+unix"):
        h.aio_connect_unix(side.sock)
    else:
        h.aio_connect_tcp("127.0.0.1", str(side.port))
    end = time.monotonic() + limit
    while not (h.aio_is_negotiating() or h.aio_is_ready()):
        if h.aio_is_dead() or h.aio_is_closed():
            raise nbd.Error("connection died in the handshake",
                            "died in the handshake")
        if time.monotonic() > end:
            raise nbd.Error(f"no greeting within {limit} s",
                            f"no greeting within {limit} s")
        h.poll(100)


def connect_retrying(side):
    """For a TCP server a script can only poll (no pid file, no socket
    file): refused until it listens.  Returns the connected handle."""
    end = time.monotonic() + WAIT
    while True:
        h = handle(side)
        try:
            connect(side, h)
            return h
        except nbd.Error as e:
            close(h)
            if time.monotonic() > end or \
                    e.errno not in (111, "ECONNREFUSED"):
                raise
            time.sleep(0.05)


def extents(h, ctx, size):
    """The whole export's extents for one context, adjacent equal ones
    merged (how a server splits a map is not what a client relies on)."""
    out, off = [], 0
    while off < size:
        got = []

        def cb(meta, _off, entries, _err):
            if meta == ctx:
                got.extend(entries)
            return 0
        h.block_status(min(size - off, 1 << 30), off, cb)
        if not got:
            return out + [["no extents at", off]]
        for i in range(0, len(got), 2):
            n = min(got[i], size - off)
            if out and out[-1][1] == got[i + 1]:
                out[-1][0] += n
            else:
                out.append([n, got[i + 1]])
            off += n
            if off >= size:
                break
    return out


def checksum(h, size):
    d = hashlib.sha256()
    for off in range(0, size, 1 << 20):
        d.update(h.pread(min(1 << 20, size - off), off))
    return d.hexdigest()


def maps(h, obs, size, key):
    for ctx in ("base:allocation", "qemu:allocation-depth"):
        if h.can_meta_context(ctx):
            try:
                obs[f"{key}.{ctx}"] = extents(h, ctx, size)
            except nbd.Error as e:
                obs[f"{key}.{ctx}"] = err(e)


def writes(h, obs, size):
    """Data, zero data (what --detect-zeroes looks at), write-zeroes,
    trim and FUA writes at aligned places spread over the export."""
    unit = max(4096, (size // 16) // 4096 * 4096)
    ops = [("pwrite data", lambda: h.pwrite(b"\xa5" * unit, unit)),
           ("pwrite zeroes", lambda: h.pwrite(b"\0" * unit, 4 * unit)),
           ("zero", lambda: h.zero(unit, 8 * unit)),
           ("trim", lambda: h.trim(unit, 12 * unit)),
           ("fua", lambda: h.pwrite(b"\x5a" * 4096, 14 * unit,
                                    nbd.CMD_FLAG_FUA)),
           ("flush", lambda: h.flush())]
    for name, op in ops:
        if 15 * unit > size:
            break
        if name == "trim" and not h.can_trim():
            continue
        if name == "fua" and not h.can_fua():
            continue
        if name == "flush" and not h.can_flush():
            continue
        try:
            op()
            obs[f"write.{name}"] = "ok"
        except nbd.Error as e:
            obs[f"write.{name}"] = err(e)


def session(side, obs, h, checks, key="c"):
    """One client connection (h connected, in option mode): the handshake,
    then the checks the pattern asks for."""
    if "info" in checks:
        exports = []
        try:
            h.opt_list(lambda n, d: exports.append([n, d]) or 0)
            obs["info.exports"] = exports
        except nbd.Error as e:
            obs["info.exports"] = err(e)
        metas = []
        try:
            h.opt_list_meta_context(lambda n: metas.append(n) or 0)
            obs["info.meta_contexts"] = sorted(metas)
        except nbd.Error as e:
            obs["info.meta_contexts"] = err(e)
    h.add_meta_context("base:allocation")
    h.add_meta_context("qemu:allocation-depth")
    try:
        h.opt_go()
        obs[f"{key}.go"] = "ok"
    except nbd.Error as e:
        obs[f"{key}.go"] = err(e)
        return
    size = h.get_size()
    obs["info.size"] = size
    if "info" in checks:
        obs["info.flags"] = {
            f: getattr(h, f)() for f in (
                "is_read_only", "can_flush", "can_fua", "can_trim",
                "can_zero", "can_fast_zero", "can_df", "can_multi_conn",
                "can_cache", "is_rotational")}
        obs["info.block_size"] = [h.get_block_size(s) for s in (
            nbd.SIZE_MINIMUM, nbd.SIZE_PREFERRED, nbd.SIZE_MAXIMUM)]
        obs["info.meta_negotiated"] = [
            c for c in ("base:allocation", "qemu:allocation-depth")
            if h.can_meta_context(c)]
        obs["info.structured_replies"] = h.get_structured_replies_negotiated()
        obs["info.tls"] = h.get_tls_negotiated()
        for f in ("get_export_description", "get_canonical_export_name"):
            try:
                obs[f"info.{f[4:]}"] = getattr(h, f)()
            except nbd.Error as e:
                obs[f"info.{f[4:]}"] = err(e)
    if "read" in checks:
        obs["read.sha256"] = checksum(h, size)
    if "map" in checks:
        maps(h, obs, size, "map")
    if "write" in checks and not h.is_read_only():
        writes(h, obs, size)
        obs["write.after.sha256"] = checksum(h, size)
        maps(h, obs, size, "write.after")
    h.shutdown()
    close(h)


def second_client(side, obs):
    """A persistent server serves the next client after the first left."""
    h = handle(side)
    try:
        connect(side, h)
        h.opt_go()
        obs["second"] = h.get_size()
        h.shutdown()
    except nbd.Error as e:
        obs["second"] = err(e)
    close(h)


def abort_handshake(s):
    """End a raw client's handshake as a polite client does (the rest of
    the greeting, client flags, NBD_OPT_ABORT; NBD proto.md "Newstyle
    negotiation"), so the server has no failed negotiation to report."""
    s.settimeout(WAIT)
    try:
        got = b""
        while len(got) < 10:  # IHAVEOPT magic and handshake flags
            chunk = s.recv(10 - len(got))
            if not chunk:
                return
            got += chunk
        s.sendall(struct.pack(">IQII", 3, 0x49484156454F5054, 2, 0))
        s.recv(20)  # the server's reply to NBD_OPT_ABORT, if any
    except OSError:
        pass


def shared_clients(side, obs, n):
    """n clients connected; one more gets no greeting until one leaves."""
    hs = []
    try:
        for _ in range(n):
            h = handle(side)
            connect(side, h)
            h.opt_go()
            hs.append(h)
    except nbd.Error as e:
        obs["shared.connected"] = f"{len(hs)} then {err(e)}"
        return
    finally:
        obs.setdefault("shared.connected", len(hs))
    fam = socket.AF_UNIX if side.uri().startswith("nbd+unix") \
        else socket.AF_INET
    s = socket.socket(fam)
    s.connect(side.sock if fam == socket.AF_UNIX
              else ("127.0.0.1", side.port))
    s.settimeout(3)
    try:
        early = s.recv(8)
    except socket.timeout:
        early = None
    obs["shared.extra_greeted_while_full"] = early is not None
    if hs:
        hs[0].shutdown()
        close(hs[0])
        hs = hs[1:]
    greeting = early
    if early is None:
        s.settimeout(WAIT)
        try:
            greeting = s.recv(8)
            obs["shared.extra_greeted_after_one_left"] = \
                greeting.decode(errors="replace")
        except socket.timeout:
            obs["shared.extra_greeted_after_one_left"] = \
                f"no greeting after {WAIT} s"
    if greeting:
        abort_handshake(s)
    s.close()
    for h in hs:
        h.shutdown()
        close(h)


# ---- holders (lock tests) -------------------------------------------------

def hold(side, obs):
    what = side.pattern.get("hold")
    if not what:
        return
    side.hold_pids, side.hold_socks = [], []
    fmt = image_format(side.pattern) or "raw"
    if what == "port":
        s = socket.socket()
        s.bind(("127.0.0.1", side.port))
        s.listen(1)
        side.hold_socks.append(s)
        return
    if what == "qemu-nbd":
        hs = f"{side.dir}/hold.sock"
        p = subprocess.Popen([ORACLE, "-t", "-k", hs, "-f", fmt, side.img],
                             stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        side.hold_pids.append(p.pid)
        side.procs = getattr(side, "procs", []) + [p]
        obs["hold.ready"] = wait_until(lambda: os.path.exists(hs))
    else:
        # qemu-io answers a command once the image is open (and locked);
        # probing the lock with another qemu-img would race the open.
        p = subprocess.Popen(["qemu-io", "-f", fmt, side.img],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        side.hold_pids.append(p.pid)
        side.procs = getattr(side, "procs", []) + [p]
        p.stdin.write(b"read 0 512\n")
        p.stdin.flush()
        seen = b""
        end = time.monotonic() + WAIT
        while b"512/512 bytes" not in seen and time.monotonic() < end:
            r, _, _ = select.select([p.stdout], [], [], 0.5)
            if r:
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
        obs["hold.ready"] = b"512/512 bytes" in seen


# ---- after the server is gone ---------------------------------------------

def leftovers(side, obs):
    args = side.argv(side.pattern.get("args", []))
    if has_opt(args, "-k", "--socket"):
        obs["left.socket"] = os.path.exists(side.sock)
    if has_opt(args, "--pid-file"):
        obs["left.pidfile"] = os.path.exists(side.pid)
    obs["left.tmp"] = sorted(os.listdir(f"{side.dir}/tmp"))


def image_state(side, obs):
    """The image as qemu-img sees it after the server exited."""
    fmt = image_format(side.pattern)
    if fmt is None or not os.path.exists(side.img):
        return
    if fmt == "qcow2":
        r = subprocess.run(["qemu-img", "check", side.img],
                           capture_output=True, text=True, timeout=WAIT * 4)
        obs["image.check"] = r.returncode if r.returncode == 0 else \
            [r.returncode] + lines(r.stdout + r.stderr)
    r = subprocess.run(["qemu-img", "map", "--output=json", "-f", fmt,
                        side.img], capture_output=True, text=True,
                       timeout=WAIT * 4)
    if r.returncode:
        obs["image.map"] = lines(r.stderr)
        return
    m = []
    for e in json.loads(r.stdout):
        # Host offsets are where each server chose to allocate: not
        # something a client or qemu-img compare can see.
        v = [e["length"], e["depth"], e["zero"], e["data"]]
        if m and m[-1][1:] == v[1:]:
            m[-1][0] += v[0]
        else:
            m.append(v)
    obs["image.map"] = m


def finish(side, obs):
    """The server is gone (or is made to go): what it said, what it left
    behind and the state of the image."""
    obs["stderr"] = read_lines(side, "server", "err")
    obs["stdout"] = read_lines(side, "server", "out")
    kill_leftovers(side)
    leftovers(side, obs)
    image_state(side, obs)
    return obs


def wait_gone(pid, proc, limit=WAIT):
    if proc is not None:
        try:
            return proc.wait(limit)
        except subprocess.TimeoutExpired:
            return None
    return "exited" if wait_until(lambda: not alive(pid), limit) else None


# ---- modes ----------------------------------------------------------------

def mode_serve(side):
    p = side.pattern
    obs = {}
    args = side.argv(p["args"])
    checks = p.get("checks", [])
    hold(side, obs)
    forking = "--fork" in args
    persistent = has_opt(args, "-t", "--persistent")
    pidfile = has_opt(args, "--pid-file")
    unix = side.uri().startswith("nbd+unix")
    proc = spawn(side, [side.prog] + args, "server")

    if forking:
        try:
            obs["fork.exit"] = proc.wait(WAIT * 2)
        except subprocess.TimeoutExpired:
            obs["fork.exit"] = f"still running after {WAIT * 2} s"
        # --fork returns only when ready: what a script finds right away.
        if pidfile:
            obs["ready.pidfile"] = os.path.exists(side.pid)
        if unix:
            obs["ready.socket"] = os.path.exists(side.sock)
        pids = find_pids(side)
        server_pid, server_proc = (pids[0] if pids else None), None
        ready = obs["fork.exit"] == 0 and server_pid is not None
    else:
        server_pid, server_proc = proc.pid, proc
        if pidfile or unix:
            sig = (lambda: os.path.exists(side.pid)) if pidfile else \
                (lambda: os.path.exists(side.sock))
            wait_until(lambda: sig() or proc.poll() is not None)
            ready = sig() and proc.poll() is None
            obs["ready.signal"] = "pidfile" if pidfile else "socket"
            if ready:
                obs["ready.signal_seen"] = True
            elif proc.poll() is not None:
                obs["ready.signal_seen"] = f"exited {proc.returncode} first"
            else:
                obs["ready.signal_seen"] = f"not within {WAIT} s"
            if ready and unix and pidfile:
                obs["ready.socket_with_pidfile"] = os.path.exists(side.sock)
        else:
            ready = True
    if ready and pidfile and server_pid:
        try:
            with open(side.pid) as f:
                obs["pidfile.is_server"] = int(f.read().strip()) == server_pid
        except (OSError, ValueError) as e:
            obs["pidfile.is_server"] = f"unreadable: {type(e).__name__}"

    if ready:
        # The first connection after the signal a script waits for must
        # be served (no retry); for TCP without a pid file a script can
        # only retry until the port listens.
        if persistent:
            h = None
            try:
                if pidfile or unix or forking:
                    h = handle(side)
                    connect(side, h)
                else:
                    h = connect_retrying(side)
                h.opt_abort()
                obs["ready.first_connect"] = "ok"
            except nbd.Error as e:
                obs["ready.first_connect"] = err(e)
            if h is not None:
                close(h)
        if "client" in p:
            run_client(side, p["client"], obs, "client")
        if checks or not persistent:
            try:
                if persistent or pidfile or unix or forking:
                    h = handle(side)
                    connect(side, h)
                else:
                    h = connect_retrying(side)
                obs["c.connect"] = "ok"
                session(side, obs, h, checks)
            except nbd.Error as e:
                obs["c.connect"] = err(e)
        if persistent and "second" in checks:
            second_client(side, obs)
        for c in checks:
            if c.startswith("shared:") and persistent:
                shared_clients(side, obs, int(c.split(":")[1]))

    # Lifecycle: a persistent server is stopped by the pattern's signal;
    # any other must exit by itself once its client left.
    if server_pid and (persistent or not ready):
        sig = p.get("stop", "TERM")
        if alive(server_pid):
            os.kill(server_pid, getattr(signal, "SIG" + sig))
            rc = wait_gone(server_pid, server_proc)
            obs[f"stop.SIG{sig}"] = "still running" if rc is None else rc
        else:
            obs["stop.already_gone"] = True
    elif server_pid:
        rc = wait_gone(server_pid, server_proc)
        obs["exit_after_last_client"] = f"still running after {WAIT} s" \
            if rc is None else rc
    return finish(side, obs)


def mode_activation(side):
    p = side.pattern
    obs = {}
    if "client" in p:
        run_client(side, p["client"], obs, "client")
        obs["exit_after_client"] = wait_until(lambda: not find_pids(side))
    if p.get("checks"):
        h = handle(side)
        try:
            connect(side, h, activation=[side.prog] + side.argv(p["args"]))
            obs["c.connect"] = "ok"
            session(side, obs, h, p["checks"])
        except nbd.Error as e:
            obs["c.connect"] = err(e)
        # Without -t the server exits after its client; libnbd's close
        # would wait for it forever, so look before closing.
        persistent = has_opt(p["args"], "-t", "--persistent")
        gone = wait_until(lambda: not find_pids(side),
                          WAIT if not persistent else 0)
        obs["exit_after_last_client"] = gone
        kill_leftovers(side)
        close(h)
    image_state(side, obs)
    return obs


def mode_error(side):
    p = side.pattern
    obs = {}
    hold(side, obs)
    args = side.argv(p["args"])
    proc = spawn(side, [side.prog] + args, "server")
    try:
        obs["exit"] = proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        obs["exit"] = f"still running after {WAIT} s"
    return finish(side, obs)


def mode_list(side):
    p = side.pattern
    obs = {}
    kind, _, rest = p["server"].partition(" ")
    sargs = side.argv(rest.split())
    argv = (["nbdkit"] if kind == "nbdkit" else [side.prog]) + sargs
    srv = spawn(side, argv, "listed")
    if "--pid-file" in sargs or any(a.startswith("--pid-file=")
                                    for a in sargs):
        ready = lambda: os.path.exists(side.pid)  # noqa: E731
    else:
        ready = lambda: os.path.exists(side.sock)  # noqa: E731
    obs["server.ready"] = wait_until(
        lambda: ready() or (srv.poll() not in (None, 0)))
    if obs["server.ready"]:
        run_client(side, [side.prog] + p["args"], obs, "list")
    kill_leftovers(side)
    return obs


def mode_output(side):
    p = side.pattern
    obs = {}
    r = subprocess.run([side.prog] + p["args"], capture_output=True,
                       text=True, timeout=WAIT)
    obs["exit"] = r.returncode
    out = r.stdout
    if "--version" in p["args"]:
        first = out.splitlines()[0] if out else ""
        # The release's micro number and the parenthesis (Debian's
        # package version; ours says "qcow2-nbd V") must differ; scripts
        # parse "qemu-nbd MAJOR.MINOR.MICRO".
        import re
        # qemu-nbd names itself as it was called (argv[0]).
        m = re.match(r"(\S+) (\d+)\.(\d+)\.(\d+)( \(.*\))?$", first)
        obs["version.first_line"] = \
            f"{m.group(1)} {m.group(2)}.{m.group(3)}.N (...)" if m else first
    for g in p.get("greps", []):
        obs[f"help.mentions {g}"] = g in out
    if "--help" in p["args"]:
        obs["help.first_line"] = out.splitlines()[0] if out else ""
    obs["stderr"] = lines(r.stderr)
    return obs
