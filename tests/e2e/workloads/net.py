"""Network test guest. workload_args: MODE [ARGS...]; reports on its console as ``KEY {json}``.

Everything goes through the guest's own Linux stack (its network namespace), whose only way
out is its vif.

Modes:
  ifaces               the interfaces the guest has and what ctx.net says of them ("IFACES")
  ping ADDR...         one ICMP echo to each address, from an ICMP echo socket ("PING")
  serve PORT SEED MIB  an http.server on PORT whose / is MIB MiB of a seeded pattern ("SERVING")
  fetch URL            GET URL (retrying while the server is not up yet): length and sha256 ("FETCH")
  pinger ADDR          ping ADDR every 50 ms forever; data/pings and data/lost count the answers
  names NAME           what the guest's resolver is told and makes of its own and an unknown NAME ("NAMES")
"""

import hashlib
import http.server
import json
import random
import socket
import struct
import threading
import time
import urllib.request

ICMP_ECHO, ICMP_ECHOREPLY = 8, 0


def report(key, value):
    print(f"{key} {json.dumps(value)}", flush=True)


def ping(address, seq=1, timeout=2.0):
    """One ICMP echo (the kernel fills the identifier and the checksum of an ICMP echo socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        payload = b"xenlike-ping-%d" % seq
        start = time.monotonic()
        sock.sendto(struct.pack("!BBHHH", ICMP_ECHO, 0, 0, 0, seq) + payload, (address, 0))
        while True:
            data, _ = sock.recvfrom(2048)
            kind, _code, _csum, _ident, got_seq = struct.unpack_from("!BBHHH", data)
            if kind == ICMP_ECHOREPLY and got_seq == seq and data[8:] == payload:
                return (time.monotonic() - start) * 1000


def mode_ifaces(ctx):
    names = sorted(name for _index, name in socket.if_nameindex())
    net = {name: {"mac": nic.mac, "ip": nic.ip} for name, nic in ctx.net.items()}
    report("IFACES", {"names": names, "net": net})
    ctx.shutdown.wait()


def mode_ping(ctx, *addresses):
    """One answered echo from each address, retrying for 20 s (its guest may still be booting)."""
    results = {}
    for address in addresses:
        deadline = time.monotonic() + 20
        while True:
            try:
                results[address] = {"ok": True, "ms": round(ping(address, timeout=0.5), 3)}
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    results[address] = {"ok": False, "error": str(exc)}
                    break
                time.sleep(0.1)
    report("PING", results)
    ctx.shutdown.wait()


def mode_serve(ctx, port, seed, mib):
    body = random.Random(int(seed)).randbytes(int(mib) << 20)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", int(port)), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    report("SERVING", {"port": int(port), "sha256": hashlib.sha256(body).hexdigest(), "length": len(body)})
    ctx.shutdown.wait()
    server.shutdown()


def mode_fetch(ctx, url):
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                data = reply.read()
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                report("FETCH", {"error": str(exc)})
                ctx.shutdown.wait()
                return
            time.sleep(0.2)
    report("FETCH", {"status": reply.status, "length": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    ctx.shutdown.wait()


def mode_pinger(ctx, address):
    answered = lost = 0
    seq = 0
    while not ctx.shutdown.is_set():
        seq = (seq + 1) & 0xFFFF
        try:
            ping(address, seq, timeout=0.5)
            answered += 1
        except OSError:
            lost += 1
        ctx.xenstore.write("data/pings", str(answered))
        ctx.xenstore.write("data/lost", str(lost))
        ctx.sleep(0.05)


def mode_names(ctx, unknown):
    with open("/etc/resolv.conf") as f:
        nameservers = [line.split()[1] for line in f if line.split()[:1] == ["nameserver"]]
    with open("/etc/hosts") as f:
        hosts = [line.split() for line in f if line.split() and not line.startswith("#")]
    try:
        socket.gethostbyname(unknown)
        lookup = "resolved"
    except socket.gaierror as exc:
        lookup = exc.errno
    report("NAMES", {"nameservers": nameservers, "hosts": hosts, "hostname": socket.gethostname(),
                     "fqdn": socket.getfqdn(), "unknown": lookup})
    ctx.shutdown.wait()


MODES = {"ifaces": mode_ifaces, "ping": mode_ping, "serve": mode_serve, "fetch": mode_fetch, "pinger": mode_pinger,
         "names": mode_names}


def run(ctx):
    mode, *args = ctx.args
    MODES[mode](ctx, *args)
