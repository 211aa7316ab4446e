#!/usr/bin/env python3
"""tern's benchmark: tern against the manual procedure, same lab, same run.

The manual procedure is what Podman's documentation gives for moving a
container: `podman container checkpoint --export` on the source, copy the
archive to the target (here a plain TCP copy over the same lab link, no
encryption: it favours the manual side), `podman container restore --import`
on the target. Its downtime is all of it: the container is frozen from the
checkpoint until the restore returns.

Run through scripts/bench.sh (which brings the lab up). Prints a Markdown
table of medians (and min..max) per workload and method, with the ratio
tern/manual, and writes the rows as JSON with --json FILE.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(REPO, "scripts", "lab.sh")
TERN = os.path.join(os.environ.get("TERN_BIN_DIR", os.path.join(REPO, "target", "release")), "tern")
IMAGE = "localhost/tern-busybox:latest"
NAME = "bench1"
PORT = 9009

WORKLOADS = {
    "idle counter": ["sh", "-c", "i=0; while true; do echo $i > /count; i=$((i+1)); sleep 0.1; done"],
    "256 MiB": ["memhog", "256", "0"],
}


def sh(*args, check=True, capture=True):
    r = subprocess.run(args, capture_output=capture, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def podman(host, *args, check=True):
    return sh(LAB, "podman", host, *args, check=check)


def ns(host):
    return ["nsenter", f"--net=/run/netns/{host}"]


def clean():
    for h in ("client1", "client2"):
        podman(h, "rm", "-f", "-t", "0", NAME, check=False)


def start(workload):
    clean()
    podman("client1", "run", "-d", "--name", NAME, IMAGE, *WORKLOADS[workload])
    # Ready once the counter ticks (memhog has written all its memory by then).
    deadline = time.time() + 120
    while time.time() < deadline:
        r = podman("client1", "exec", NAME, "cat", "/count", check=False)
        if r.returncode == 0 and r.stdout.strip().isdigit() and int(r.stdout) >= 5:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{workload} did not start")


def running(host):
    r = podman(host, "inspect", "--format", "{{.State.Status}}", NAME, check=False)
    return r.stdout.strip() == "running"


COPY_RECV = f"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(1); print("ready", flush=True)
c, _ = s.accept()
with open(sys.argv[1], "wb") as f:
    while True:
        b = c.recv(1 << 20)
        if not b: break
        f.write(b)
"""
COPY_SEND = f"""
import socket, sys
c = socket.create_connection((sys.argv[2], {PORT}))
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(1 << 20)
        if not b: break
        c.sendall(b)
c.close()
"""


def manual(workload):
    start(workload)
    src = "/var/lib/tern-lab/client1/bench-export.tar.zst"
    dst = "/var/lib/tern-lab/client2/bench-import.tar.zst"
    for p in (src, dst):
        if os.path.exists(p):
            os.remove(p)
    recv = subprocess.Popen(ns("client2") + [sys.executable, "-c", COPY_RECV, dst], stdout=subprocess.PIPE, text=True)
    recv.stdout.readline()  # listening
    t0 = time.monotonic()
    podman("client1", "container", "checkpoint", "--export", src, NAME)
    t1 = time.monotonic()
    sh(*ns("client1"), sys.executable, "-c", COPY_SEND, src, "198.51.100.12")
    recv.wait(timeout=600)
    t2 = time.monotonic()
    podman("client2", "container", "restore", "--import", dst)
    t3 = time.monotonic()
    assert running("client2"), "manual restore: not running"
    size = os.path.getsize(src)
    podman("client1", "rm", "-f", "-t", "0", NAME)
    clean()
    for p in (src, dst):
        os.remove(p)
    ms = lambda a, b: round((b - a) * 1000)
    return {"downtime_ms": ms(t0, t3), "total_ms": ms(t0, t3), "bytes_on_wire": size,
            "phases": {"checkpoint": ms(t0, t1), "copy": ms(t1, t2), "restore": ms(t2, t3)}}


def tern(workload):
    start(workload)
    r = sh(TERN, "migrate", NAME, "--to", "client2", "--json", check=False)
    if r.returncode != 0:
        raise RuntimeError(f"tern migrate failed: {r.stdout}{r.stderr}")
    j = json.loads(r.stdout)
    assert running("client2"), "tern: not running on client2"
    clean()
    return {"downtime_ms": j["downtime_ms"], "total_ms": j["total_ms"], "bytes_on_wire": j["bytes_on_wire"],
            "phases": {p["phase"]: p["ms"] for p in j["phases"]}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workload", action="append", choices=list(WORKLOADS), help="default: all")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    rows = []
    for w in args.workload or list(WORKLOADS):
        for i in range(args.runs):
            # Alternate the order so drift on a noisy machine hits both alike.
            methods = [("manual", manual), ("stop-and-copy", tern)]
            if i % 2:
                methods.reverse()
            for name, fn in methods:
                r = fn(w)
                r.update(method=name, workload=w, link="unlimited", run=i)
                rows.append(r)
                print(f"  {w:14} {name:14} run {i}: downtime {r['downtime_ms']} ms, total {r['total_ms']} ms, "
                      f"{r['bytes_on_wire']} bytes  {r['phases']}", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(table(rows, args.runs))


def table(rows, runs):
    def stat(vals):
        return f"{statistics.median(vals):.0f} ({min(vals):.0f}..{max(vals):.0f})"
    out = [f"Medians of {runs} runs (min..max); link: lab veth, unlimited.\n",
           "| workload | method | downtime ms | total ms | MiB on the wire | downtime tern/manual | total tern/manual |",
           "|---|---|---|---|---|---|---|"]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    for w in workloads:
        med = {}
        for m in ("manual", "stop-and-copy"):
            rs = [r for r in rows if r["workload"] == w and r["method"] == m]
            med[m] = (statistics.median(r["downtime_ms"] for r in rs), statistics.median(r["total_ms"] for r in rs))
            ratio = ("", "") if m == "manual" else (
                f"{med[m][0] / med['manual'][0]:.2f}", f"{med[m][1] / med['manual'][1]:.2f}")
            out.append(f"| {w} | {m} | {stat([r['downtime_ms'] for r in rs])} | {stat([r['total_ms'] for r in rs])} | "
                       f"{statistics.median(r['bytes_on_wire'] for r in rs) / 2**20:.1f} | {ratio[0]} | {ratio[1]} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
