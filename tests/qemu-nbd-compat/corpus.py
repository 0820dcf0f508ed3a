# SPDX-License-Identifier: MIT
# The corpus of real qemu-nbd invocations that runner.py replays against
# the oracle (Debian's qemu-nbd 7.2) and the candidate (our qemu-nbd
# mode), comparing what clients observe.  Data only: one dict per
# pattern, so adding a pattern is adding one entry.
#
# Every pattern is a command line found in public code, named in
# "source" as repository@commit:path[:line] (found with the code search
# tools; QEMU's files are those of Debian's qemu 7.2 source package,
# which is upstream v7.2.0 plus Debian's patches).  The command line is
# kept as the source writes it; only paths, ports and the image are ours.
#
# Keys:
#   name     unique id, printed with PASS/FAIL
#   source   where the invocation comes from
#   image    the set-up (runner.py IMAGES): qcow2, raw, odd-raw, chain,
#            empty-qcow2, tar
#   args     qemu-nbd's arguments; placeholders: @IMG@ (the set-up's main
#            file), @DIR@ (this side's directory), @SOCK@, @PID@, @PORT@,
#            @PKI@ (X.509 credentials: ca, server and client certificates),
#            @PSK@ (a directory holding keys.psk for user "qemu"),
#            @TAR_OFFSET@ (where the qcow2 image starts in the tar set-up)
#   mode     serve (default): start it, be a client, stop it;
#            activation: started by a client through systemd socket
#              activation (LISTEN_FDS), as libnbd's
#              nbd_connect_systemd_socket_activation does;
#            error: it must fail; compare exit status, messages, files;
#            list: it is the -L client of the server in "server";
#            output: --version/--help text that scripts parse
#   checks   what the built-in libnbd client does, in one connection
#            (qemu-nbd without -t exits after its first client):
#            info (handshake: exports, descriptions, size, flags, block
#            sizes, meta contexts), read (checksum), map (base:allocation
#            and qemu:allocation-depth when offered), write (writes,
#            zeroes, trims, flush, then read and map again), second (a
#            second client is served: persistent servers), shared:N (N
#            clients connected, one more waits ungreeted until one leaves)
#   client   instead of (or after) the built-in client, a real client
#            command from the source; @URI@ is the server's URI, @PROG@
#            the qemu-nbd under test (for clients that start it)
#   export   export name the built-in client asks for (default "")
#   tls      x509 or psk: the built-in client's credentials
#   stop     signal that ends a persistent server (default TERM)
#   hold     a process that holds the image first (lock tests):
#            qemu-io or qemu-nbd (always Debian's, for both sides)
#   server   for mode list: "self ARGS" (the side's own qemu-nbd serving
#            with ARGS) or "nbdkit ARGS"
#   greps    for mode output: strings scripts grep --help for

LIBNBD = "libguestfs/libnbd@9075f68f"
NBDKIT = "libguestfs/nbdkit@45b72f5b"
IMAGEIO = "oVirt/ovirt-imageio@0eb617c4"
V2V = "libguestfs/virt-v2v@71376bdb"
AVOCADO = "avocado-framework/avocado-vt@05bc5f7b"
QEMU = "qemu/qemu v7.2.0 (Debian qemu 1:7.2+dfsg-7+deb12u18)"

# What each source always puts on the command line, spliced below.
# virt-v2v lib/qemuNBD.ml:80: -t --shared=0 --discard=unmap, pid file, socket.
V2V_HEAD = ["-t", "--shared=0", "--discard=unmap", "--pid-file", "@PID@",
            "--socket", "@SOCK@"]
# oVirt imageio ovirt_imageio/_internal/qemu_nbd.py:101-128 with its
# defaults (cache=none where O_DIRECT works, aio=native with it,
# discard=unmap, detect_zeroes=unmap).
IMAGEIO_IO = ["--cache=none", "--aio=native", "--discard=unmap",
              "--detect-zeroes=unmap"]


def imageio_json(driver, extra=""):
    """The json: file name imageio builds (qemu_nbd.py:148-165)."""
    return ('json:{"driver": "%s", "file": {"driver": "file", '
            '"filename": "@IMG@"}%s}' % (driver, extra))


def doc_authz(identity):
    """qemu-nbd's manual (docs/tools/qemu-nbd.rst:233): X.509, an
    authz-simple identity, a 1M subset of a raw file over TCP."""
    return ["--object", "tls-creds-x509,id=tls0,endpoint=server,dir=@PKI@",
            "--object", "authz-simple,id=auth0,identity=" + identity,
            "--tls-creds", "tls0", "--tls-authz", "auth0",
            "-t", "-x", "subset", "-p", "@PORT@", "--pid-file=@PID@",
            "--image-opts", "driver=raw,offset=1M,size=1M,file.driver=file,"
            "file.filename=@IMG@"]


PATTERNS = [
    # ---- libnbd's test suite and examples ---------------------------
    dict(name="libnbd-info-list",
         source=f"{LIBNBD}:info/info-list-qemu.sh:35",
         image="raw",
         args=["-t", "--socket=@SOCK@", "--pid-file=@PID@", "-x", "hello",
               "-D", "world", "@IMG@"],
         export="hello",
         client=["nbdinfo", "--list", "--json", "@URI@"],
         checks=["info", "read", "second"]),
    dict(name="libnbd-info-description",
         source=f"{LIBNBD}:info/info-description-qemu.sh:35",
         image="raw",
         args=["-f", "raw", "-t", "--socket=@SOCK@", "--pid-file=@PID@",
               "-x", "hello", "-D", "world", "@IMG@"],
         export="hello",
         client=["nbdinfo", "--json", "nbd+unix:///hello?socket=@SOCK@"],
         checks=["info", "read", "map"]),
    dict(name="libnbd-info-map-allocation-depth",
         source=f"{LIBNBD}:info/info-map-qemu-allocation-depth.sh:62",
         image="chain",
         args=["-t", "--socket=@SOCK@", "--pid-file=@PID@", "-f", "qcow2",
               "-A", "@IMG@"],
         client=["nbdinfo", "--map=qemu:allocation-depth", "@URI@"],
         checks=["info", "read", "map"]),
    dict(name="libnbd-interop-qemu-nbd",
         source=f"{LIBNBD}:interop/Makefile.am:159 (interop-qemu-nbd)",
         mode="activation", image="raw",
         args=["-f", "raw", "-x", "/", "@IMG@"],
         export="/",
         checks=["info", "read", "map", "write"]),
    dict(name="libnbd-interop-tls-certs",
         source=f"{LIBNBD}:interop/Makefile.am:176 (interop-qemu-nbd-tls-certs)",
         mode="activation", image="raw", tls="x509",
         args=["--object",
               "tls-creds-x509,id=tls0,endpoint=server,dir=@PKI@",
               "--tls-creds", "tls0", "-f", "raw", "-x", "/", "@IMG@"],
         export="/",
         checks=["info", "read", "write"]),
    dict(name="libnbd-interop-tls-psk",
         source=f"{LIBNBD}:interop/Makefile.am:198 (interop-qemu-nbd-tls-psk)",
         mode="activation", image="raw", tls="psk",
         args=["--object", "tls-creds-psk,id=tls0,endpoint=server,dir=@PSK@",
               "--tls-creds", "tls0", "-f", "raw", "-x", "/", "@IMG@"],
         export="/",
         checks=["info", "read"]),
    dict(name="libnbd-list-exports",
         source=f"{LIBNBD}:interop/Makefile.am:218 (list-exports-qemu-nbd)",
         mode="activation", image="raw",
         args=["-f", "raw", "-x", "testing", "-D", "data", "@IMG@"],
         export="testing",
         checks=["info"]),
    dict(name="libnbd-socket-activation",
         source=f"{LIBNBD}:interop/Makefile.am:228 (socket-activation-qemu-nbd)",
         mode="activation", image="raw",
         args=["-f", "raw", "-x", "", "@IMG@"],
         checks=["info", "read"]),
    dict(name="libnbd-block-size-probed",
         source=f"{LIBNBD}:interop/interop-qemu-block-size.sh:46 ($1='')",
         image="odd-raw",
         args=["-k", "@SOCK@", "@IMG@"],
         checks=["info", "read", "map"]),
    dict(name="libnbd-block-size-raw",
         source=f"{LIBNBD}:interop/interop-qemu-block-size.sh:46 ($1='-f raw')",
         image="odd-raw",
         args=["-k", "@SOCK@", "-f", "raw", "@IMG@"],
         checks=["info", "read", "map"]),
    dict(name="libnbd-copy-to-qcow2",
         source=f"{LIBNBD}:copy/copy-file-to-qcow2.sh:57",
         image="empty-qcow2",
         args=["-f", "qcow2", "--cache=writeback", "-t", "--socket=@SOCK@",
               "--pid-file=@PID@", "@IMG@"],
         client=["nbdcopy", "@DATA@", "@URI@"],
         checks=["read", "map"]),
    dict(name="libnbd-copy-compressed",
         source=f"{LIBNBD}:copy/copy-file-to-qcow2-compressed.sh:58",
         mode="activation", image="empty-qcow2",
         args=["--image-opts",
               "driver=compress,file.driver=qcow2,file.file.driver=file,"
               "file.file.filename=@IMG@"],
         client=["nbdcopy", "@DATA@", "--", "[", "@PROG@", "--image-opts",
                 "driver=compress,file.driver=qcow2,file.file.driver=file,"
                 "file.file.filename=@IMG@", "]"]),
    dict(name="libnbd-dump-empty-qcow2",
         source=f"{LIBNBD}:dump/dump-empty-qcow2.sh:38",
         mode="activation", image="empty-qcow2",
         args=["-r", "-f", "qcow2", "@IMG@"],
         client=["nbddump", "--", "[", "@PROG@", "-r", "-f", "qcow2",
                 "@IMG@", "]"]),
    dict(name="libnbd-nbdinfo-map-captive",
         source=f"{LIBNBD}:info/main.c:83 (nbdinfo --help example)",
         mode="activation", image="qcow2",
         args=["-r", "-f", "qcow2", "@IMG@"],
         client=["nbdinfo", "--map", "--", "[", "@PROG@", "-r", "-f",
                 "qcow2", "@IMG@", "]"],
         checks=["info", "map"]),
    dict(name="libnbd-fuse-qcow2",
         source=f"{LIBNBD}:fuse/test-qcow2.sh:51 (nbdfuse's server; "
                "the client here is libnbd, not a FUSE mount)",
         mode="activation", image="qcow2",
         args=["-f", "qcow2", "--cache=writeback", "@IMG@"],
         checks=["info", "read", "map", "write"]),
    dict(name="libnbd-structured-read",
         source=f"{LIBNBD}:interop/structured-read.sh:40",
         mode="activation", image="qcow2",
         args=["-f", "qcow2", "@IMG@"],
         checks=["info", "read", "map"]),
    dict(name="libnbd-python-checksum",
         source=f"{LIBNBD}:python/examples/checksum.py:35",
         mode="activation", image="qcow2",
         args=["--read-only", "--persistent", "@IMG@"],
         checks=["info", "read"]),
    dict(name="libnbd-example-list-exports",
         source=f"{LIBNBD}:examples/list-exports.c:4",
         image="raw",
         args=["-x", "hello", "-t", "-k", "@SOCK@", "@IMG@"],
         export="hello",
         checks=["info", "read", "second"]),
    dict(name="libnbd-example-strict-reads",
         source=f"{LIBNBD}:examples/strict-structured-reads.c:4",
         image="qcow2",
         args=["-f", "qcow2", "-k", "@SOCK@", "-r", "@IMG@"],
         checks=["info", "read", "map"]),

    # ---- nbdkit ------------------------------------------------------
    dict(name="nbdkit-nbd-plugin-command",
         source=f"{NBDKIT}:tests/test-nbd-qcow2.sh:56",
         mode="activation", image="qcow2",
         args=["-f", "qcow2", "@IMG@"],
         client=["nbdkit", "-U", "-", "nbd", "command=@PROG@", "arg=-f",
                 "arg=qcow2", "arg=@IMG@", "--run",
                 "nbdinfo --json \"$uri\" && nbdcopy \"$uri\" - | sha256sum"]),
    dict(name="nbdkit-ondemand-list",
         source=f"{NBDKIT}:tests/test-ondemand-list.sh:60",
         mode="list",
         server="nbdkit -U @SOCK@ --exit-with-parent memory 1M",
         args=["-k", "@SOCK@", "-L"]),
    dict(name="nbdkit-eflags-list",
         source=f"{NBDKIT}:tests/test-eflags.sh:84",
         mode="list",
         server="nbdkit -r -U @SOCK@ --exit-with-parent memory 4M",
         args=["--list", "-k", "@SOCK@"]),
    dict(name="nbdkit-doc-partition",
         source=f"{NBDKIT}:plugins/nbd/nbdkit-nbd-plugin.pod:290 "
                "(-P, removed from qemu-nbd in 6.0)",
         mode="error", image="qcow2",
         args=["-P", "1", "-f", "qcow2", "@IMG@"]),

    # ---- oVirt imageio -----------------------------------------------
    dict(name="imageio-qcow2-unix",
         source=f"{IMAGEIO}:ovirt_imageio/_internal/qemu_nbd.py:101-165 "
                "(fmt=qcow2, defaults)",
         image="qcow2",
         args=["--export-name=", "--persistent", "--shared=8",
               "--socket=@SOCK@"] + IMAGEIO_IO + [
               "--allocation-depth", imageio_json("qcow2")],
         checks=["info", "read", "map", "write", "second", "shared:8"]),
    dict(name="imageio-raw-tcp",
         source=f"{IMAGEIO}:ovirt_imageio/_internal/qemu_nbd.py:101-165 "
                "(fmt=raw, tcp)",
         image="raw",
         args=["--export-name=export", "--persistent", "--shared=8",
               "--bind=127.0.0.1", "--port=@PORT@"] + IMAGEIO_IO + [
               imageio_json("raw")],
         export="export",
         checks=["info", "read", "map", "write", "second"]),
    dict(name="imageio-no-backing-chain",
         source=f"{IMAGEIO}:ovirt_imageio/_internal/qemu_nbd.py:156 "
                "(backing_chain=False)",
         image="chain",
         args=["--export-name=", "--persistent", "--shared=8",
               "--socket=@SOCK@", "--read-only"] + IMAGEIO_IO + [
               "--allocation-depth",
               imageio_json("qcow2", ', "backing": null')],
         checks=["info", "read", "map"]),
    dict(name="imageio-offset-size",
         source=f"{IMAGEIO}:ovirt_imageio/_internal/qemu_nbd.py:145 "
                "(offset/size in a raw file)",
         image="raw",
         args=["--export-name=", "--persistent", "--shared=8",
               "--socket=@SOCK@"] + IMAGEIO_IO + [
               imageio_json("raw", ', "offset": 1048576, "size": 2097152')],
         checks=["info", "read", "map", "write"]),
    dict(name="imageio-nbd-client-doc",
         source=f"{IMAGEIO}:test/nbd-client:17",
         image="qcow2",
         args=["--socket", "@SOCK@", "--format", "qcow2",
               "--export-name=export", "--persistent", "--cache=none",
               "--aio=native", "--discard=unmap", "--detect-zeroes=unmap",
               "@IMG@"],
         export="export",
         checks=["info", "read", "map", "write"]),
    dict(name="imageio-signal-int",
         source=f"{IMAGEIO}:test/qemu_nbd_test.py:462 (test_block_signals: "
                "SIGINT ends qemu-nbd)",
         image="raw",
         args=["--export-name=", "--persistent", "--shared=8",
               "--socket=@SOCK@"] + IMAGEIO_IO + [imageio_json("raw")],
         stop="INT",
         checks=["info", "second"]),
    dict(name="imageio-signal-hup",
         source=f"{IMAGEIO}:test/qemu_nbd_test.py:462 (test_block_signals: "
                "SIGHUP ends qemu-nbd)",
         image="raw",
         args=["--export-name=", "--persistent", "--shared=8",
               "--socket=@SOCK@"] + IMAGEIO_IO + [imageio_json("raw")],
         stop="HUP",
         checks=["info"]),

    # ---- virt-v2v ----------------------------------------------------
    dict(name="v2v-input-disk-snapshot",
         source=f"{V2V}:lib/qemuNBD.ml:80 + input/input_disk.ml:180",
         image="qcow2",
         args=V2V_HEAD + ["-s", "--format", "qcow2", "@IMG@"],
         checks=["info", "read", "map", "write", "second", "shared:3"]),
    dict(name="v2v-input-ova-probe",
         source=f"{V2V}:lib/qemuNBD.ml:80 + input/input_ova.ml:197 "
                "(format probed)",
         image="qcow2",
         args=V2V_HEAD + ["-s", "@IMG@"],
         checks=["info", "read", "write"]),
    dict(name="v2v-output-qcow2",
         source=f"{V2V}:lib/qemuNBD.ml:80 + output/output.ml:124",
         image="empty-qcow2",
         args=V2V_HEAD + ["--format", "qcow2", "@IMG@"],
         client=["nbdcopy", "@DATA@", "@URI@"],
         checks=["info", "read", "map", "write"]),
    dict(name="v2v-output-compressed",
         source=f"{V2V}:lib/qemuNBD.ml:80 + output/output.ml:119",
         image="empty-qcow2",
         args=V2V_HEAD + ["--image-opts",
               "driver=compress,file.driver=qcow2,file.file.driver=file,"
               "file.file.filename=@IMG@"],
         client=["nbdcopy", "@DATA@", "@URI@"],
         checks=["info"]),
    dict(name="v2v-version",
         source=f"{V2V}:lib/qemuNBD.ml:44 (parses `qemu-nbd --version`)",
         mode="output", args=["--version"]),
    dict(name="v2v-help-selinux",
         source=f"{V2V}:lib/qemuNBD.ml:36 (`qemu-nbd --help |& grep -sq "
                "selinux`); libnbd interop/dirty-bitmap.sh:30 (-B); "
                "nbdkit tests/test-eflags.sh:49 (--list)",
         mode="output", args=["--help"],
         greps=["selinux", "-B", "--list", "--pid-file", "--fork",
                "--allocation-depth", "--image-opts", "--tls-creds"]),

    # ---- QEMU's iotests ----------------------------------------------
    dict(name="iotests-common-rc-nbd-proto",
         source=f"{QEMU}:tests/qemu-iotests/common.rc:237+517 "
                "(_qemu_nbd_wrapper for IMGPROTO=nbd)",
         image="raw",
         args=["--pid-file=@PID@", "-v", "-t", "-k", "@SOCK@", "-f", "raw",
               "-e", "42", "-x", "", "@IMG@"],
         checks=["info", "read", "map", "write", "second"]),
    dict(name="iotests-common-nbd-unix-fork",
         source=f"{QEMU}:tests/qemu-iotests/common.nbd:47 + 241:59",
         image="odd-raw",
         args=["--pid-file=@PID@", "-v", "-t", "-k", "@SOCK@", "--fork",
               "-f", "raw", "@IMG@"],
         client=["qemu-img", "map", "-f", "raw", "--output=json", "@URI@"],
         checks=["info", "read", "map", "second"]),
    dict(name="iotests-241-probed-raw",
         source=f"{QEMU}:tests/qemu-iotests/241:72 (probed raw: "
                "sector alignment)",
         image="odd-raw",
         args=["--pid-file=@PID@", "-v", "-t", "-k", "@SOCK@", "--fork",
               "@IMG@"],
         client=["qemu-io", "-f", "raw", "-c", "map", "@URI@"],
         checks=["info", "read", "map"]),
    dict(name="iotests-common-nbd-tcp-fork",
         source=f"{QEMU}:tests/qemu-iotests/common.nbd:60 + 233:74",
         image="qcow2",
         args=["--pid-file=@PID@", "-v", "-t", "-b", "127.0.0.1", "-p",
               "@PORT@", "--fork", "-f", "qcow2", "@IMG@"],
         client=["qemu-img", "info", "--output=json", "@URI@"],
         checks=["info", "read", "map", "write"]),
    dict(name="iotests-233-tls-x509",
         source=f"{QEMU}:tests/qemu-iotests/233:88",
         image="qcow2", tls="x509",
         args=["--pid-file=@PID@", "-v", "-t", "-b", "127.0.0.1", "-p",
               "@PORT@", "--fork", "--object",
               "tls-creds-x509,dir=@PKI@,endpoint=server,id=tls0,"
               "verify-peer=on", "--tls-creds", "tls0", "-f", "qcow2",
               "@IMG@"],
         checks=["info", "read", "write"]),
    dict(name="iotests-233-tls-list",
         source=f"{QEMU}:tests/qemu-iotests/233:95 (-L over TLS)",
         mode="list",
         server="self --pid-file=@PID@ -t -b 127.0.0.1 -p @PORT@ --object "
                "tls-creds-x509,dir=@PKI@,endpoint=server,id=tls0 "
                "--tls-creds tls0 -f qcow2 -x tlsexp @IMG@",
         image="qcow2",
         args=["-L", "-b", "127.0.0.1", "-p", "@PORT@", "--object",
               "tls-creds-x509,dir=@PKI@,endpoint=client,id=tls0",
               "--tls-creds=tls0"]),
    dict(name="iotests-233-plain-client-tls-server",
         source=f"{QEMU}:tests/qemu-iotests/233:95 (plain -L to a TLS server)",
         mode="list",
         server="self --pid-file=@PID@ -t -b 127.0.0.1 -p @PORT@ --object "
                "tls-creds-x509,dir=@PKI@,endpoint=server,id=tls0 "
                "--tls-creds tls0 -f qcow2 @IMG@",
         image="qcow2",
         args=["-L", "-b", "127.0.0.1", "-p", "@PORT@"]),
    dict(name="iotests-223-list-self",
         source=f"{QEMU}:tests/qemu-iotests/223:147 + nbd-qemu-allocation:60",
         mode="list",
         server="self --pid-file=@PID@ -v -t -k @SOCK@ -r -f qcow2 -A @IMG@",
         image="chain",
         args=["--list", "-k", "@SOCK@"]),
    dict(name="iotests-nbd-qemu-allocation",
         source=f"{QEMU}:tests/qemu-iotests/tests/nbd-qemu-allocation:60",
         image="chain",
         args=["--pid-file=@PID@", "-v", "-t", "-k", "@SOCK@", "--fork",
               "-r", "-f", "qcow2", "-A", "@IMG@"],
         client=["qemu-img", "map", "--output=json", "--image-opts",
                 "driver=nbd,server.type=unix,server.path=@SOCK@,"
                 "x-dirty-bitmap=qemu:allocation-depth"],
         checks=["info", "read", "map"]),
    dict(name="iotests-209-export-name",
         source=f"{QEMU}:tests/qemu-iotests/209:35 (iotests.qemu_nbd: --fork)",
         image="qcow2",
         args=["--pid-file=@PID@", "--fork", "-k", "@SOCK@", "-x", "exp",
               "-f", "qcow2", "@IMG@"],
         export="exp",
         checks=["info", "read", "write"]),
    dict(name="iotests-block-status-cache",
         source=f"{QEMU}:tests/qemu-iotests/tests/block-status-cache:43",
         image="raw",
         args=["--fork", "--socket=@SOCK@", "--format=raw", "--persistent",
               "--allocation-depth", "--read-only", "--pid-file=@PID@",
               "@IMG@"],
         checks=["info", "read", "map", "second"]),
    dict(name="iotests-302-offset",
         source=f"{QEMU}:tests/qemu-iotests/302:84 + iotests.py:509 "
                "(qemu_nbd_popen)",
         image="tar",
         args=["--persistent", "--pid-file", "@PID@", "--socket", "@SOCK@",
               "--export-name", "exp", "--format", "raw", "--offset",
               "@TAR_OFFSET@", "@IMG@"],
         export="exp",
         client=["qemu-img", "info", "--output=json", "--image-opts",
                 "driver=qcow2,file.driver=nbd,file.export=exp,"
                 "file.server.type=unix,file.server.path=@SOCK@"],
         stop="KILL",
         checks=["info", "read"]),
    dict(name="iotests-264-popen",
         source=f"{QEMU}:tests/qemu-iotests/264:50 + iotests.py:509 "
                "(qemu_nbd_popen: --persistent, killed at the end)",
         image="qcow2",
         args=["--persistent", "--pid-file", "@PID@", "-k", "@SOCK@", "-f",
               "qcow2", "@IMG@"],
         stop="KILL",
         checks=["info", "write", "second"]),
    dict(name="iotests-147-early-pipe",
         source=f"{QEMU}:tests/qemu-iotests/147:97 + iotests.py:492 "
                "(qemu_nbd_early_pipe: --fork, TCP)",
         image="raw",
         args=["--fork", "-f", "raw", "@IMG@", "-b", "localhost", "-p",
               "@PORT@"],
         checks=["info", "read"]),

    # ---- CI and scripts, cloud images, documentation recipes ---------
    dict(name="avocado-vt-export-tcp",
         source=f"{AVOCADO}:virttest/nbd.py:62-130 (export_image: -A -r -f "
                "-t -D -p -x --fork --pid-file)",
         image="chain",
         args=["-A", "-r", "-f", "qcow2", "-t", "-D", "avocado export",
               "-p", "@PORT@", "-x", "stg", "--fork", "--pid-file", "@PID@",
               "@IMG@"],
         export="stg",
         checks=["info", "read", "map", "second"]),
    dict(name="avocado-vt-export-tls",
         source=f"{AVOCADO}:virttest/nbd.py:110-118 (tls-creds-x509 server)",
         image="qcow2", tls="x509",
         args=["--object",
               "tls-creds-x509,id=stg_server_tls_creds,endpoint=server,"
               "dir=@PKI@", "--tls-creds", "stg_server_tls_creds",
               "-f", "qcow2", "-t", "-p", "@PORT@", "--fork", "--pid-file",
               "@PID@", "@IMG@"],
         checks=["info", "read"]),
    dict(name="avocado-vt-list-unix",
         source=f"{AVOCADO}:virttest/nbd.py:136-170 (list_exported_image)",
         mode="list",
         server="self -f qcow2 -t -x stg -D described -k @SOCK@ --fork "
                "--pid-file @PID@ @IMG@",
         image="qcow2",
         args=["-L", "-k", "@SOCK@"]),
    dict(name="pv-nbd-sharer-launcher",
         source="fabiand/pv-nbd-sharer@1eb8bd03:launcher:9 "
                "(kubernetes PV served to a KubeVirt-style pod)",
         image="chain",
         args=["--verbose", "--persistent", "-k", "@SOCK@", "@IMG@"],
         checks=["info", "read", "map", "write", "second"]),
    dict(name="qemu-doc-oneshot",
         source=f"{QEMU}:docs/tools/qemu-nbd.rst:225 (one-shot, default "
                "port 10809)",
         image="qcow2", fixed_port=10809,
         args=["-f", "qcow2", "@IMG@"],
         checks=["info", "read", "map"]),
    dict(name="qemu-doc-fork-shared-ro",
         source=f"{QEMU}:docs/tools/qemu-nbd.rst:247",
         image="qcow2",
         args=["--fork", "--persistent", "--shared=5", "--socket=@SOCK@",
               "--read-only", "--format=qcow2", "@IMG@"],
         checks=["info", "read", "second", "shared:5"]),
    dict(name="qemu-doc-tls-authz-subset",
         source=f"{QEMU}:docs/tools/qemu-nbd.rst:233 (X.509 + authz-simple, "
                "1M subset via --image-opts)",
         image="raw", tls="x509",
         args=doc_authz("CN=laptop.example.com,,O=Example Org,,L=London,,"
                        "ST=London,,C=GB"),
         export="subset",
         checks=["info", "read", "map", "write"]),
    dict(name="qemu-doc-tls-authz-accepted",
         source=f"{QEMU}:docs/tools/qemu-nbd.rst:233 with the identity as "
                "qemu 7.2 spells the client's DN (C= first; the manual's "
                "CN= first spelling is refused, see the pattern above)",
         image="raw", tls="x509",
         args=doc_authz("C=GB,,ST=London,,L=London,,O=Example Org,,"
                        "CN=laptop.example.com"),
         export="subset",
         checks=["info", "read", "map", "write"]),
    dict(name="qemu-doc-psk-list",
         source=f"{QEMU}:docs/tools/qemu-nbd.rst:270 (-L with PSK)",
         mode="list",
         server="self --pid-file=@PID@ -t -b 127.0.0.1 -p @PORT@ --object "
                "tls-creds-psk,id=tls0,dir=@PSK@,endpoint=server "
                "--tls-creds tls0 -x psk -f qcow2 @IMG@",
         image="qcow2",
         args=["--object",
               "tls-creds-psk,id=tls0,dir=@PSK@,username=qemu,endpoint=client",
               "--tls-creds", "tls0", "-L", "-b", "127.0.0.1", "-p",
               "@PORT@"]),

    # ---- lifecycle and locking ---------------------------------------
    dict(name="lock-held-by-qemu-nbd",
         source=f"{V2V}:lib/qemuNBD.ml:80 invocation while Debian's "
                "qemu-nbd serves the image",
         mode="error", image="qcow2", hold="qemu-nbd",
         args=V2V_HEAD + ["--format", "qcow2", "@IMG@"]),
    dict(name="lock-held-by-qemu-io",
         source=f"{LIBNBD}:copy/copy-file-to-qcow2.sh:57 invocation while "
                "qemu-io has the image open",
         mode="error", image="qcow2", hold="qemu-io",
         args=["-f", "qcow2", "--cache=writeback", "-t", "--socket=@SOCK@",
               "--pid-file=@PID@", "@IMG@"]),
    dict(name="lock-seen-by-qemu-io",
         source=f"{LIBNBD}:copy/copy-file-to-qcow2.sh:57 (qemu-io opens the "
                "served image: must be refused)",
         image="qcow2",
         args=["-f", "qcow2", "--cache=writeback", "-t", "--socket=@SOCK@",
               "--pid-file=@PID@", "@IMG@"],
         client=["qemu-io", "-f", "qcow2", "-c", "read 0 512", "@IMG@"],
         checks=["info"]),

    # ---- errors ------------------------------------------------------
    dict(name="error-missing-file",
         source=f"{V2V}:lib/qemuNBD.ml:80 invocation, image missing",
         mode="error", image="qcow2",
         args=V2V_HEAD + ["--format", "qcow2", "@DIR@/missing.qcow2"]),
    dict(name="error-missing-file-fork",
         source=f"{QEMU}:docs/tools/qemu-nbd.rst:247 invocation, image missing",
         mode="error", image="qcow2",
         args=["--fork", "--persistent", "--shared=5", "--socket=@SOCK@",
               "--read-only", "--format=qcow2", "@DIR@/missing.qcow2"]),
    dict(name="error-wrong-format",
         source=f"{LIBNBD}:copy/copy-file-to-qcow2.sh:57 invocation on a raw "
                "file",
         mode="error", image="raw",
         args=["-f", "qcow2", "--cache=writeback", "-t", "--socket=@SOCK@",
               "--pid-file=@PID@", "@IMG@"]),
    dict(name="error-unknown-option",
         source=f"{IMAGEIO}:ovirt_imageio/_internal/qemu_nbd.py:101 with an "
                "option this qemu-nbd lacks",
         mode="error", image="qcow2",
         args=["--export-name=", "--persistent", "--no-such-option",
               "--socket=@SOCK@", "@IMG@"]),
    dict(name="error-bad-shared",
         source=f"{IMAGEIO}:ovirt_imageio/_internal/qemu_nbd.py:104 with a "
                "bad --shared value",
         mode="error", image="qcow2",
         args=["--export-name=", "--persistent", "--shared=-1",
               "--socket=@SOCK@", "@IMG@"]),
    dict(name="error-bad-cache",
         source=f"{IMAGEIO}:test/nbd-client:17 with --cache=bogus",
         mode="error", image="qcow2",
         args=["--socket", "@SOCK@", "--format", "qcow2",
               "--export-name=export", "--persistent", "--cache=bogus",
               "@IMG@"]),
    dict(name="error-detect-zeroes-unmap-no-discard",
         source=f"{IMAGEIO}:ovirt_imageio/_internal/qemu_nbd.py:125-128 "
                "(discard=None, detect_zeroes=unmap)",
         mode="error", image="qcow2",
         args=["--export-name=", "--persistent", "--socket=@SOCK@",
               "--detect-zeroes=unmap", "--format=qcow2", "@IMG@"]),
    dict(name="error-compress-no-file",
         source=f"{LIBNBD}:copy/copy-file-to-qcow2-compressed.sh:35",
         mode="error",
         args=["-k", "@SOCK@", "--image-opts", "driver=compress"]),
    dict(name="error-port-in-use",
         source=f"{QEMU}:tests/qemu-iotests/common.nbd:60 (port taken: "
                "the loop tries the next one)",
         mode="error", image="qcow2", hold="port",
         args=["-v", "-t", "-b", "127.0.0.1", "-p", "@PORT@", "--fork",
               "-f", "qcow2", "@IMG@"]),
    dict(name="error-list-nothing-there",
         source=f"{AVOCADO}:virttest/nbd.py:136-170 (list_exported_image "
                "with no server)",
         mode="error",
         args=["-L", "-k", "@SOCK@"]),
    dict(name="error-image-opts-with-format",
         source=f"{V2V}:output/output.ml:119 with --format added",
         mode="error", image="empty-qcow2",
         args=["-t", "--socket", "@SOCK@", "--format", "qcow2",
               "--image-opts",
               "driver=qcow2,file.driver=file,file.filename=@IMG@"]),

    # ---- QEMU's null driver (tests that need a disk, not its bytes) ----
    # Only the handshake is compared: QEMU's null-co leaves read buffers
    # as they were (read-zeroes=off), ours reads zeros.
    dict(name="qemu-iotests-162-null-co-tcp",
         source=f"{QEMU}:tests/qemu-iotests/162:61",
         args=["-p", "@PORT@", "-f", "raw", "--fork", "null-co://"],
         checks=["info"]),
    dict(name="qemu-iotests-162-null-co-unix",
         source=f"{QEMU}:tests/qemu-iotests/162:72",
         args=["-k", "@SOCK@", "-f", "raw", "--fork", "null-co://"],
         checks=["info"]),
    dict(name="qemu-null-co-image-opts-size",
         source=f"{QEMU}:tests/qemu-iotests/186:138 (the node options "
                "driver=null-co,read-zeroes=on,size=1M of a -drive there, "
                "given to qemu-nbd --image-opts)",
         args=["-k", "@SOCK@", "-t", "--image-opts",
               "driver=null-co,read-zeroes=on,size=1M"],
         checks=["info", "read", "second"]),
    dict(name="error-null-co-filename",
         source=f"{QEMU}:tests/qemu-iotests/162:61 with a path after the "
                "protocol",
         mode="error",
         args=["-k", "@SOCK@", "-f", "raw", "null-co://disk"]),
]
