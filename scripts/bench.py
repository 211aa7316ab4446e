#!/usr/bin/env python3
"""tern's benchmark: tern against the manual procedure, same lab, same links.

Methods
  manual          what Podman's documentation gives for moving a container:
                  `podman container checkpoint --export` on the source, copy
                  the archive to the target (a plain TCP copy over the same
                  lab link, no encryption: it favours the manual side),
                  `podman container restore --import` on the target. Its
                  downtime is all of it: frozen from the checkpoint until the
                  restore returns.
  podman-floor    Podman's own floor: `checkpoint --export --compress none`,
                  the file handed to the target with a hard link (same disk,
                  no network), `restore --import`. What any tool built on
                  Podman's export and import pays over an infinitely fast
                  link: the bound under tern's downtime.
  stop-and-copy   tern migrate --mode stop-and-copy
  hash-pre-copy   tern migrate --mode hash-pre-copy (content-addressed)
  post-copy       tern migrate --mode post-copy (restored at once, memory pulled
                  from the frozen source afterwards; its rows add the fill time
                  and the counter's ticks per second during the fill against
                  before the freeze)
  hash-post-copy  tern migrate --mode hash-post-copy (post-copy after
                  hash-pre-copy's base: the fill sends only the pages the base
                  lacks; its rows show the base's pause under "rounds")
  pre-copy        tern migrate --mode pre-copy (soft-dirty rounds; only when
                  both hosts report soft-dirty tracking, else skipped)

Links (tbf on eth0 inside both lab namespaces, so both directions are shaped)
  unlimited, 1gbit, 100mbit

Workloads
  idle            a shell counter, ten ticks a second
  256MiB@0MiB/s ... 1GiB@100MiB/s
                  memhog: that much written random memory, dirtied at that rate
  redis           Debian's redis-server (localhost/tern-redis) on the Podman
                  network `lan`, filled with 64 MiB of random values (redis@NMiB
                  for another size); a client on client0 (`appclient redis`,
                  one connection, one RPUSH every 10 ms) runs from 2 s before
                  the migration to 3 s after it; then `appclient redis-verify`
                  on the target: every acknowledged write must be there.
  postgres        PostgreSQL 15 (localhost/tern-postgres, as user postgres) on
                  `lan`, `pgbench -i -s 10` from client0, then `pgbench -c 4
                  -j 2 -T ... -P 1 -l` (persistent connections) across the
                  migration, 2 s before to 3 s after; afterwards
                  pgbench_history must hold one row per processed transaction.
                  Checkpointing it needs CAP_SYS_RESOURCE (its processes run as
                  a non-root user): where root lacks it the bench stops before
                  measuring anything (--no-cap-check tries anyway).
  The application workloads' containers hold established TCP connections:
  the manual methods checkpoint and restore them with --tcp-established and
  their Redis client reconnects when its connection dies (the gap is then the
  reconnect time a client sees); tern's client never reconnects (its
  connection must survive). Their images are imported on both hosts
  beforehand (the same image ID), so no image crosses during a measurement.
  They run only when named with --workload.

Per run: downtime, total time, bytes on the wire, bytes through the source's
link (both directions), source and target CPU time, peak memory (VmHWM) of
the two agents. The Markdown table on stdout gives the median and min..max
per (workload, link, method) and the ratio tern/manual of the medians.
Application workloads add the client's figures: client_gap_ms (the longest
time the client waited for an answer; postgres: the longest time between two
transactions one client completed, the maximum over its clients),
client_errors, client_connections and, for Redis, acked/verified
(client_reconnected for the manual methods), for PostgreSQL pg_processed,
pg_failed, pg_rows_ok, client_aborted. The table then gains the client gap,
the gap minus the downtime (per run, then the median), and a note where a
connection died.

Run it through scripts/bench.sh (as root; it installs, builds and brings the
lab up). `--quick` is 256MiB@20MiB/s over 1gbit, all methods, 3 runs.
`--from-json FILE` prints the table (and --chart) of rows saved earlier with
--json, without measuring anything.

Exit status: 0 all runs succeeded, 1 some run failed (the table lists the
failures; stderr has tern's output and the agents' logs) or postgres cannot
be checkpointed on these hosts (nothing measured), 2 bad usage.
"""
import argparse
import datetime
import json
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(REPO, "scripts", "lab.sh")
CHART = os.path.join(REPO, "scripts", "bench", "chart.py")
BIN = os.environ.get("TERN_BIN_DIR", os.path.join(REPO, "target", "release"))
TERN = os.path.join(BIN, "tern")
APPCLIENT = os.path.join(BIN, "appclient")
STATE = os.environ.get("TERN_LAB_STATE", os.path.join(REPO, ".tern"))
INVENTORY = os.path.join(STATE, "inventory.toml")  # written by scripts/lab.sh up
IMAGE = "localhost/tern-busybox:latest"
LAB_VAR = "/var/lib/tern-lab"
LAB_RUN = "/run/tern-lab"
SRC, DST = "client1", "client2"
CLIENT = "client0"  # the applications' clients: a plain machine, network namespace only
DST_IP = "198.51.100.12"
NAME = "bench1"
COPY_PORT = 9009
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20
# Generous: 1 GiB at 100 Mbit/s is ~90 s a copy, and pre-copy may copy it more than once.
STEP_TIMEOUT = 1800

METHODS = ["manual", "podman-floor", "stop-and-copy", "pre-copy", "hash-pre-copy", "post-copy", "hash-post-copy"]
TERN_MODES = METHODS[2:]

# tbf on each namespace's eth0 (egress). With hrtimers tbf does not need a
# burst of rate/HZ, but the burst must hold a whole GSO super-packet (up to
# 64 KiB on veth) plus what piles up while the shaping CPU is busy elsewhere;
# a bigger burst mostly lets the start of a transfer go at veth speed. So:
# a burst that lets a TCP copy reach the rate, 1 MiB at 1 Gbit/s (~8 ms at
# the rate) and 256 KiB at 100 Mbit/s (~20 ms, room for four GSO packets).
# latency bounds the queue (limit = rate x latency + burst): 50 ms is a
# switch-like buffer that keeps a sender's window full without dropping, for
# TCP (manual) and QUIC (tern) alike.
LINKS = {
    "unlimited": None,
    "1gbit": ["rate", "1gbit", "burst", "1mb", "latency", "50ms"],
    "100mbit": ["rate", "100mbit", "burst", "256kb", "latency", "50ms"],
}

IDLE = ["sh", "-c", "i=0; while true; do echo $i > /count.new; mv /count.new /count; i=$((i+1)); sleep 0.1; done"]


def _workloads():
    w = {"idle": IDLE}
    for mib, label in ((256, "256MiB"), (1024, "1GiB")):
        for rate in (0, 20, 100):
            w[f"{label}@{rate}MiB/s"] = ["memhog", str(mib), str(rate)]
    return w


WORKLOADS = _workloads()
# Any other size and rate can be named on the command line: 512MiB@20MiB/s.
CUSTOM = re.compile(r"^(\d+)(MiB|GiB)@(\d+)MiB/s$")

# Real applications on the Podman network `lan` (a macvlan: the container's
# address is on the lab's segment wherever it runs), their clients on client0.
# {workload: (application, size)}: Redis's size is the MiB of random values it
# holds, PostgreSQL's pgbench's scale factor.
LAN = "lan"
IMAGES_DIR = "/opt/tern/images"  # scripts/test-image/build-apps.sh (install-deps.sh) builds them
REDIS_IMAGE = "localhost/tern-redis:latest"
POSTGRES_IMAGE = "localhost/tern-postgres:latest"
REDIS_RUN = [REDIS_IMAGE, "redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "",
             "--appendonly", "no"]
POSTGRES_RUN = ["--user", "postgres", POSTGRES_IMAGE, "postgres", "-D", "/var/lib/postgresql/data"]
APPS = {"redis": ("redis", 64), "postgres": ("postgres", 10)}
# Without --workload: the memory workloads; the applications run when named.
DEFAULT_WORKLOADS = list(WORKLOADS)
WORKLOADS["redis"] = REDIS_RUN
WORKLOADS["postgres"] = POSTGRES_RUN
# redis@256MiB: Redis holding that much.
CUSTOM_REDIS = re.compile(r"^redis@(\d+)MiB$")
# The client runs this long before the migration starts and after it ends.
CLIENT_LEAD_S, CLIENT_TAIL_S = 2, 3
CAP_SYS_RESOURCE = 24


def add_custom_workloads(values):
    for v in values or []:
        for x in v.split(","):
            x = x.strip()
            m = CUSTOM.match(x)
            if m and x not in WORKLOADS:
                mib = int(m.group(1)) * (1024 if m.group(2) == "GiB" else 1)
                WORKLOADS[x] = ["memhog", str(mib), m.group(3)]
            m = CUSTOM_REDIS.match(x)
            if m and x not in WORKLOADS:
                WORKLOADS[x] = REDIS_RUN
                APPS[x] = ("redis", int(m.group(1)))
QUICK = {"workloads": ["256MiB@20MiB/s"], "links": ["1gbit"], "runs": 3}


class RunError(Exception):
    """A run that is an error, not a data point."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- processes --------------------------------------------------------------

def sh(args, check=True, timeout=STEP_TIMEOUT, what=None):
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RunError(f"{what or shlex.join(args)}: no answer after {timeout} s") from e
    if check and r.returncode != 0:
        raise RunError(f"{what or shlex.join(args)} failed (exit {r.returncode}):\n{r.stdout}{r.stderr}".rstrip())
    return r


def run_interruptible(cmd, timeout=STEP_TIMEOUT):
    """Run tern; on Ctrl-C or SIGTERM hand it a SIGINT (tern cancels: before the switchover the
    container goes back to running on the source) and wait for it before cleaning up."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        raise RunError(f"{shlex.join(cmd)}: no report after {timeout} s; cancelled it\n{out}{err}") from e
    except BaseException:
        if p.poll() is None:
            log("bench: cancelling the migration under way (SIGINT to tern), waiting for it")
            p.send_signal(signal.SIGINT)
            try:
                p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def ns(host):
    """A command on a lab host, as scripts/lab.sh exec runs it: an agent host's network and mount
    namespaces (its Podman network configuration and runc state are its own); client0's network
    namespace only. nsenter, not `ip netns exec`: the latter remounts /sys and runc then fails."""
    if host == CLIENT:
        return ["nsenter", f"--net=/run/netns/{host}"]
    return ["nsenter", f"--net=/run/netns/{host}", f"--mount={LAB_RUN}/ns/{host}", f"--wd={os.getcwd()}"]


_PODMAN_ARGS = {}


def podman_cmd(host, *args):
    """podman on a lab host, run directly (not through lab.sh: no bash in the CPU figures)."""
    if host not in _PODMAN_ARGS:
        out = subprocess.run(["bash", "-c", f'source "{REPO}/scripts/lib.sh"; lab_podman_args {host}'],
                             capture_output=True, text=True, check=True).stdout.split()
        _PODMAN_ARGS[host] = out
    return ns(host) + ["podman"] + _PODMAN_ARGS[host] + list(args)


def podman(host, *args, check=True, timeout=STEP_TIMEOUT):
    return sh(podman_cmd(host, *args), check=check, timeout=timeout,
              what=f"podman on {host}: {' '.join(args)}")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --- /proc ------------------------------------------------------------------

def proc_cpu_split(pid):
    """(utime+stime, cutime+cstime) of a process in seconds; children count once waited for."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is field 3 (state)
    t = [int(x) / CLK_TCK for x in fields[11:15]]  # fields 14..17: utime stime cutime cstime
    return t[0] + t[1], t[2] + t[3]


def proc_cpu_s(pid):
    return sum(proc_cpu_split(pid))


def vm_hwm_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def reset_hwm(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def link_bytes():
    """Bytes through the source's bridge port, both directions (Ethernet frames)."""
    total = 0
    for d in ("rx_bytes", "tx_bytes"):
        with open(f"/sys/class/net/veth-{SRC}/statistics/{d}") as f:
            total += int(f.read())
    return total


# --- the lab ----------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def agent_log(host):
    return os.path.join(STATE, "hosts", host, "agent.log")


def agent_pid(host):
    try:
        with open(os.path.join(STATE, "hosts", host, "agent.pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != "tern-agent":
                return None
        return pid
    except (OSError, ValueError):
        return None


def log_size(host):
    try:
        return os.path.getsize(agent_log(host))
    except OSError:
        return 0


def log_since(host, offset, limit=60):
    try:
        with open(agent_log(host), errors="replace") as f:
            f.seek(offset)
            lines = f.read().splitlines()
    except OSError:
        return "(no log)"
    lines = [ANSI.sub("", x) for x in lines]
    if len(lines) > limit:
        lines = [f"... ({len(lines) - limit} lines before)"] + lines[-limit:]
    return "\n".join(lines)


def ensure_agents():
    for h in (SRC, DST):
        if agent_pid(h) is None:
            log(f"bench: the agent on {h} is not running; restarting it (scripts/lab.sh agent-restart {h})")
            tail = log_since(h, max(0, log_size(h) - 4000), 30)
            log(f"--- last lines of {agent_log(h)}:\n{tail}")
            sh([LAB, "agent-restart", h], what=f"agent-restart {h}")


def shape(link):
    for h in (SRC, DST):
        if LINKS[link] is None:
            sh(ns(h) + ["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
        else:
            sh(ns(h) + ["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf"] + LINKS[link],
               what=f"tc tbf on {h}")


def unshape():
    for h in (SRC, DST):
        if os.path.exists(f"/run/netns/{h}"):
            subprocess.run(ns(h) + ["tc", "qdisc", "del", "dev", "eth0", "root"], capture_output=True)


def manual_paths():
    return (os.path.join(LAB_VAR, SRC, "bench", "export.tar.zst"),
            os.path.join(LAB_VAR, DST, "bench", "import.tar.zst"))


def clean():
    for h in (SRC, DST):
        podman(h, "rm", "-f", "-t", "0", NAME, check=False, timeout=120)
    for p in manual_paths():
        if os.path.exists(p):
            os.remove(p)


def inspect(host, fmt):
    r = podman(host, "inspect", "--format", fmt, NAME, check=False, timeout=120)
    return r.stdout.strip() if r.returncode == 0 else None


def read_count(pid):
    """The workload's tick counter, read through /proc (no exec session in the container)."""
    for _ in range(20):
        try:
            with open(f"/proc/{pid}/root/count") as f:
                s = f.read().strip()
            if s.isdigit():
                return int(s)
        except OSError:
            pass
        time.sleep(0.02)  # memhog truncates, then writes
    return None


def start(workload):
    clean()
    podman(SRC, "run", "-d", "--name", NAME, IMAGE, *WORKLOADS[workload])
    # Ready once the counter ticks (memhog has written all its memory by then).
    deadline = time.monotonic() + 300
    pid = None
    first = None
    while time.monotonic() < deadline:
        if pid is None:
            p = inspect(SRC, "{{.State.Pid}}")
            pid = int(p) if p and p.isdigit() and p != "0" else None
        if pid is not None:
            c = read_count(pid)
            if c is not None:
                if first is None:
                    first = c
                elif c > first and c >= 3:
                    return pid
        time.sleep(0.2)
    raise RunError(f"{workload} did not start ticking on {SRC} within 300 s")


def check_continued(before):
    """The counter carried on on the target: its value is at least the one before, and it ticks."""
    pid = inspect(DST, "{{.State.Pid}}")
    if not pid or not pid.isdigit() or pid == "0":
        raise RunError(f"{NAME} is not running on {DST} after the migration "
                       f"(state: {inspect(DST, '{{.State.Status}}')})")
    after = read_count(int(pid))
    if after is None:
        raise RunError(f"cannot read /count of {NAME} on {DST}")
    if after < before:
        raise RunError(f"the counter went back: {before} on {SRC} before, {after} on {DST} after")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.2)
        later = read_count(int(pid))
        if later is not None and later > after:
            return after
    raise RunError(f"the counter stopped on {DST}: {after} and still {later} 5 s later")


def restored_conmon_cpu():
    """CPU of the restored container's conmon on the target: it runs `runc restore` (and CRIU)
    and waits for it, for the manual procedure and tern alike, so neither podman nor the agent
    count that work among their own children."""
    p = inspect(DST, "{{.State.ConmonPid}}")
    try:
        return proc_cpu_s(int(p))
    except (TypeError, ValueError, OSError):
        return 0.0


def dirty_tracking():
    """{host: (supported, detail)} from `tern hosts --json`."""
    r = sh([TERN, "hosts", "--inventory", INVENTORY, "--json"], check=False, timeout=120)
    out = {}
    try:
        for h in json.loads(r.stdout).get("hosts") or []:
            dt = (h.get("facts") or {}).get("dirty_tracking") or {}
            out[h["name"]] = (bool(dt.get("supported")), dt.get("detail") or h.get("error") or "")
    except (ValueError, KeyError, TypeError):
        pass
    return out


# --- the workloads --------------------------------------------------------------

def cap_eff(pid="self"):
    """The effective capability set of a process (a bit mask)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def lacks_sys_resource():
    """Why a container whose processes run as a non-root user cannot be checkpointed here, or None.
    CRIU reads every process's rlimits with prlimit(2), which the kernel allows across users only
    with CAP_SYS_RESOURCE ("Can't get rlimit 0: Operation not permitted" in dump.log). The manual
    methods' podman runs as this process; tern's checkpoint is made by the source agent."""
    who = {"this process (the manual methods' podman)": "self"}
    if agent_pid(SRC):
        who[f"the agent on {SRC} (pid {agent_pid(SRC)})"] = agent_pid(SRC)
    lacking = [w for w, pid in who.items() if not cap_eff(pid) >> CAP_SYS_RESOURCE & 1]
    if not lacking:
        return None
    return (f"postgres cannot be checkpointed here: its processes run as the user postgres, and CRIU "
            f"reads a non-root process's rlimits only with CAP_SYS_RESOURCE, which is missing from "
            f"{' and from '.join(lacking)} (CapEff {cap_eff():#x}; see scripts/test-image/build-apps.sh). "
            f"Run it where root has every capability (the qemu tier), or pass --no-cap-check to try "
            f"anyway and see the checkpoint fail.")


def container_ip(host):
    ip = inspect(host, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
    return ip or None


def container_log(host, limit=2000):
    r = podman(host, "logs", NAME, check=False, timeout=120)
    return (r.stdout + r.stderr)[-limit:].strip()


def ensure_app_images(workloads):
    """The application images on both hosts, imported from the same tar (Podman's import is
    deterministic: the same image ID on both), so that no image crosses during a measurement and
    `podman container restore --import` finds it on the target."""
    for image in sorted({REDIS_IMAGE if APPS[w][0] == "redis" else POSTGRES_IMAGE for w in workloads if w in APPS}):
        tar = os.path.join(IMAGES_DIR, image.split("/")[-1].split(":")[0] + ".tar")
        ids = {}
        for h in (SRC, DST):
            if podman(h, "image", "exists", image, check=False, timeout=120).returncode != 0:
                if not os.path.exists(tar):
                    raise SystemExit(f"bench: {tar} is missing (scripts/install-deps.sh builds it)")
                log(f"bench: importing {image} on {h} from {tar}")
                podman(h, "import", tar, image)
            ids[h] = podman(h, "image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
        if ids[SRC] != ids[DST]:
            # Another image under the same name: copy the source's over (it takes the name).
            log(f"bench: {image} differs between the hosts ({ids}); copying {SRC}'s to {DST}")
            path = os.path.join(LAB_VAR, SRC, "bench", "app-image.tar")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                podman(SRC, "save", "--format", "oci-archive", "-o", path, image)
                podman(DST, "load", "-i", path)
            finally:
                if os.path.exists(path):
                    os.remove(path)
            if podman(DST, "image", "exists", ids[SRC], check=False, timeout=120).returncode != 0:
                log(f"bench: {image} still differs between the hosts: tern will ship it in every migration")


class Counter:
    """idle and memhog: a tick counter in /count, which must carry on on the target."""
    tcp = False  # no TCP connection to keep

    def __init__(self, workload, opts):
        self.workload = workload
        self.pid = self.before = None

    def start(self):
        self.pid = start(self.workload)

    def load(self, manual):
        """Just before the freeze: the counter's value and its rate, and a
        sampler of the counter on the target from the moment it runs there."""
        a, t0 = read_count(self.pid), time.monotonic()
        time.sleep(1.0)
        self.before, t1 = read_count(self.pid), time.monotonic()
        if a is None or self.before is None:
            raise RunError(f"cannot read /count of {NAME} on {SRC}")
        self.rate_before = (self.before - a) / (t1 - t0)
        self.samples, self.stop = [], threading.Event()
        self.sampler = threading.Thread(target=self.sample, daemon=True)
        self.sampler.start()

    def sample(self):
        pid = None
        while not self.stop.is_set():
            if pid is None:
                p = inspect(DST, "{{.State.Pid}}")
                pid = int(p) if p and p.isdigit() and p != "0" else None
            if pid is not None:
                c = read_count(pid)
                if c is not None:
                    self.samples.append((time.monotonic(), c))
            time.sleep(0.1)

    def check(self):
        """Right after the migration: it carried on on the target."""
        self.stop.set()
        self.sampler.join()
        return {"count_before": self.before, "count_after": check_continued(self.before)}

    def fill_rates(self, fill_ms):
        """Ticks per second before the freeze and while the memory filled
        in on the target (its first `fill_ms` there)."""
        if not fill_ms or len(self.samples) < 2:
            return {}
        t0, c0 = self.samples[0]
        inside = [(t, c) for t, c in self.samples if t <= t0 + fill_ms / 1000]
        t1, c1 = inside[-1]
        if t1 - t0 < 0.3:
            return {}
        return {"rate_before": round(self.rate_before, 2), "rate_fill": round((c1 - c0) / (t1 - t0), 2)}

    def finish(self):
        """The client's figures (none)."""
        return {}

    def close(self):
        pass


class App:
    """A server on `lan` with a client on client0 running across the migration."""
    tcp = True  # the manual methods need --tcp-established

    def __init__(self, workload, opts):
        self.workload = workload
        self.kind, self.size = APPS[workload]
        self.opts = opts
        self.ip = None
        self.client = None
        self.dir = None
        self.figures = {}

    def start(self):
        clean()
        podman(SRC, "run", "-d", "--name", NAME, "--network", LAN, *WORKLOADS[self.workload])
        deadline = time.monotonic() + 120
        while True:
            if not self.ip:
                self.ip = container_ip(SRC)
                if self.ip:
                    # The address is reused run after run, each time with a new MAC address: client0 must
                    # not go on sending to the last run's container (until its stale neighbour entry expires).
                    sh(ns(CLIENT) + ["ip", "neigh", "flush", "to", self.ip], check=False, timeout=30)
            if self.ip and self.ready():
                break
            if time.monotonic() > deadline:
                raise RunError(f"{self.kind} did not answer client0 within 120 s (address {self.ip}, state "
                               f"{inspect(SRC, '{{.State.Status}}')}); its log:\n{container_log(SRC)}")
            time.sleep(0.2)
        self.figures["app_ip"] = self.ip
        self.fill()
        self.dir = tempfile.mkdtemp(prefix="tern-bench-client.")

    def spawn(self, cmd):
        """The client on client0, its output in self.dir."""
        with open(os.path.join(self.dir, "client.out"), "w") as out, \
                open(os.path.join(self.dir, "client.err"), "w") as err:
            self.client = subprocess.Popen(ns(CLIENT) + cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.t_client = time.monotonic()
        time.sleep(CLIENT_LEAD_S)
        if self.client.poll() is not None:
            raise RunError(f"the {self.kind} client ended before the migration (exit {self.client.returncode}):\n"
                           f"{self.client_output()}")

    def client_output(self, limit=3000):
        out = []
        for f in ("client.out", "client.err"):
            try:
                with open(os.path.join(self.dir, f), errors="replace") as fh:
                    out.append(fh.read()[-limit:])
            except OSError:
                pass
        return "\n".join(x.strip() for x in out if x.strip())

    def check(self):
        """Right after the migration: running on the target at the same address."""
        state = inspect(DST, "{{.State.Status}}")
        if state != "running":
            raise RunError(f"{NAME} is not running on {DST} after the migration (state: {state})")
        ip = container_ip(DST)
        if ip != self.ip:
            raise RunError(f"the address changed: {self.ip} on {SRC}, {ip} on {DST}")
        return {}

    def finish(self):
        time.sleep(CLIENT_TAIL_S)
        return self.figures

    def close(self):
        if self.client and self.client.poll() is None:
            self.client.kill()
            self.client.wait()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class Redis(App):
    VALUE = 4096  # bytes a key

    def cli(self, *args):
        return ns(CLIENT) + ["redis-cli", "-h", self.ip, *args]

    def ready(self):
        try:
            return "PONG" in sh(self.cli("PING"), check=False, timeout=10).stdout
        except RunError:
            return False

    def fill(self):
        """self.size MiB of random values (incompressible, like memhog's memory), through redis-cli --pipe."""
        n = self.size * MIB // self.VALUE
        if n:
            p = subprocess.Popen(self.cli("--pipe"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
            try:
                for i in range(n):
                    key = f"fill:{i}".encode()
                    p.stdin.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, self.VALUE)
                                  + os.urandom(self.VALUE) + b"\r\n")
                out, _ = p.communicate(timeout=STEP_TIMEOUT)
            except BaseException:
                p.kill()
                p.wait()
                raise
            if p.returncode != 0 or f"errors: 0, replies: {n}" not in out.decode(errors="replace"):
                raise RunError(f"filling Redis with {n} keys failed (exit {p.returncode}): {out.decode(errors='replace')}")
        info = sh(self.cli("INFO", "memory"), what="redis-cli INFO memory").stdout
        m = re.search(r"^used_memory:(\d+)", info, re.M)
        self.figures["app_mib"] = round(int(m.group(1)) / MIB, 1) if m else None

    def load(self, manual):
        self.reconnect = manual
        self.until = os.path.join(self.dir, "stop")
        self.out = os.path.join(self.dir, "summary.json")
        self.spawn([APPCLIENT, "redis", "--addr", f"{self.ip}:6379", "--key", "bench", "--interval", "10ms",
                    "--until-file", self.until, "--out", self.out] + (["--reconnect"] if manual else []))

    def finish(self):
        time.sleep(CLIENT_TAIL_S)
        with open(self.until, "w"):
            pass
        try:
            self.client.wait(timeout=60)  # a read in progress waits up to 30 s
        except subprocess.TimeoutExpired as e:
            raise RunError(f"appclient redis did not stop within 60 s of its stop file\n{self.client_output()}") from e
        try:
            with open(self.out) as f:
                s = json.load(f)
        except (OSError, ValueError) as e:
            raise RunError(f"appclient redis left no summary (exit {self.client.returncode}): {e}\n"
                           f"{self.client_output()}") from e
        acked = s.get("acked") or 0
        v = sh(ns(CLIENT) + [APPCLIENT, "redis-verify", "--addr", f"{self.ip}:6379", "--key", "bench",
                             "--acked", str(acked)], check=False, timeout=300)
        try:
            vj = json.loads(v.stdout)
        except ValueError:
            vj = {}
        verified = v.returncode == 0 and vj.get("ok") is True
        f = self.figures
        f.update(client_gap_ms=s.get("longest_gap_ms"), client_errors=s.get("errors"),
                 client_connections=s.get("connections"), client_first_error=s.get("first_error"),
                 client_sent=s.get("sent"), acked=acked, verified=verified)
        if self.reconnect:
            f["client_reconnected"] = (s.get("connections") or 0) > 1
        if not verified:
            raise RunError(f"acknowledged writes are missing on {DST}: redis-verify --acked {acked} said "
                           f"(exit {v.returncode}) {v.stdout.strip()} {v.stderr.strip()}; the client's summary: "
                           f"{json.dumps(s)}")
        return f


class Postgres(App):
    CLIENTS, THREADS = 4, 2
    longest_s = {}  # {workload: the longest migration seen, s}: how long the next pgbench runs

    def cmd(self, prog, *args):
        return ns(CLIENT) + [prog, "-h", self.ip, "-p", "5432", "-U", "postgres", *args]

    def ready(self):
        try:
            return sh(self.cmd("pg_isready", "-d", "postgres", "-t", "2"), check=False, timeout=10).returncode == 0
        except RunError:
            return False

    def sql(self, query):
        return sh(self.cmd("psql", "-d", "postgres", "-Atc", query), timeout=300, what=f"psql: {query}").stdout.strip()

    def fill(self):
        sh(self.cmd("pgbench", "-i", "-q", "-s", str(self.size), "postgres"), what=f"pgbench -i -s {self.size}")
        self.figures["app_mib"] = round(int(self.sql("select pg_database_size('postgres')")) / MIB, 1)

    def load(self, manual):
        # pgbench stops only at its -T (its summary, which counts failures, needs a proper end):
        # long enough for the longest migration seen so far of this workload, with margin.
        seen = Postgres.longest_s.get(self.workload)
        move = self.opts.pg_seconds if seen is None else max(seen * 1.5, seen + 5)
        self.seconds = int(CLIENT_LEAD_S + move + CLIENT_TAIL_S + 1)
        self.prefix = os.path.join(self.dir, "pgbench")
        self.spawn(self.cmd("pgbench", "-c", str(self.CLIENTS), "-j", str(self.THREADS), "-T", str(self.seconds),
                            "-P", "1", "-l", f"--log-prefix={self.prefix}", "postgres"))

    def gaps(self):
        """{client: the longest time between two of its transactions' completions, ms}, from -l's logs."""
        done = {}
        for name in os.listdir(self.dir):
            if not name.startswith("pgbench."):
                continue
            with open(os.path.join(self.dir, name)) as f:
                for line in f:
                    x = line.split()
                    if len(x) >= 6:
                        done.setdefault(int(x[0]), []).append(int(x[4]) + int(x[5]) / 1e6)
        out = {}
        for c, ts in done.items():
            ts.sort()
            out[c] = round(max((b - a for a, b in zip(ts, ts[1:])), default=0) * 1000)
        return out

    def finish(self):
        migrated = time.monotonic()
        Postgres.longest_s[self.workload] = max(Postgres.longest_s.get(self.workload, 0),
                                                migrated - self.t_client - CLIENT_LEAD_S)
        if self.client.poll() is not None:
            log(f"bench: pgbench (-T {self.seconds}) ended before the migration did; the gap still counts, "
                f"the {CLIENT_TAIL_S} s after it are missing")
        time.sleep(CLIENT_TAIL_S)
        try:
            self.client.wait(timeout=max(0, self.t_client + self.seconds - time.monotonic()) + 120)
        except subprocess.TimeoutExpired as e:
            raise RunError(f"pgbench -T {self.seconds} did not end\n{self.client_output()}") from e
        with open(os.path.join(self.dir, "client.out"), errors="replace") as fh:
            out = fh.read()
        with open(os.path.join(self.dir, "client.err"), errors="replace") as fh:
            err = fh.read()
        processed = re.search(r"^number of transactions actually processed: (\d+)", out, re.M)
        failed = re.search(r"^number of failed transactions: (\d+)", out, re.M)
        if not processed:
            raise RunError(f"pgbench printed no summary (exit {self.client.returncode}):\n{self.client_output()}")
        aborted = sorted({int(c) for c in re.findall(r"client (\d+) (?:script \d+ )?aborted", err)})
        gaps = self.gaps()
        rows = int(self.sql("select count(*) from pgbench_history"))
        f = self.figures
        f.update(client_gap_ms=max(gaps.values(), default=None),
                 client_errors=(int(failed.group(1)) if failed else 0) + len(aborted),
                 client_connections=self.CLIENTS - len(aborted), client_aborted=len(aborted),
                 client_gaps_ms=[gaps.get(c) for c in range(self.CLIENTS)],
                 pg_processed=int(processed.group(1)), pg_failed=int(failed.group(1)) if failed else None,
                 pg_history_rows=rows, pg_rows_ok=rows == int(processed.group(1)),
                 pg_seconds=self.seconds, pg_exit=self.client.returncode)
        if aborted:
            f["client_first_error"] = next((x for x in err.splitlines() if "aborted" in x), None)
        return f


def subject(workload, opts):
    if workload in APPS:
        return {"redis": Redis, "postgres": Postgres}[APPS[workload][0]](workload, opts)
    return Counter(workload, opts)


# --- the methods ----------------------------------------------------------------

COPY_RECV = f"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {COPY_PORT})); s.listen(1); print("ready", flush=True)
c, _ = s.accept()
with open(sys.argv[1], "wb") as f:
    while True:
        b = c.recv(1 << 20)
        if not b: break
        f.write(b)
"""
COPY_SEND = f"""
import socket, sys
c = socket.create_connection((sys.argv[2], {COPY_PORT}))
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(1 << 20)
        if not b: break
        c.sendall(b)
c.close()
"""


def ms(a, b):
    return round((b - a) * 1000)


def run_manual(subj, opts, floor=False):
    """The manual procedure; floor=True: Podman's own floor instead (an
    uncompressed export handed to the target with a rename on the shared
    disk, no network), what any tool built on export and import pays even
    over an infinitely fast link. A container with established TCP
    connections (the applications) needs --tcp-established both ways."""
    subj.start()
    tcp = ["--tcp-established"] if subj.tcp else []
    src, dst = manual_paths()
    for p in (src, dst):
        os.makedirs(os.path.dirname(p), exist_ok=True)
    recv = None if floor else subprocess.Popen(ns(DST) + [sys.executable, "-c", COPY_RECV, dst], stdout=subprocess.PIPE, text=True)
    try:
        if recv and recv.stdout.readline().strip() != "ready":
            raise RunError("the copy's receiver on the target did not start")
        subj.load(manual=True)
        lb0 = link_bytes()
        # RUSAGE_CHILDREN counts a child once it is waited for: the receiver is
        # reaped after the source-side figure is taken, so it lands on the target's.
        c0 = children_cpu()
        t0 = time.monotonic()
        podman(SRC, "container", "checkpoint", "--export", src, *(["--compress", "none"] if floor else []), *tcp, NAME)
        t1 = time.monotonic()
        if floor:
            size = os.path.getsize(src)
            os.link(src, dst)
            c1 = children_cpu()
        else:
            sh(ns(SRC) + [sys.executable, "-c", COPY_SEND, src, DST_IP], what="copy to the target")
            c1 = children_cpu()
            try:
                recv.wait(timeout=STEP_TIMEOUT)
            except subprocess.TimeoutExpired as e:
                raise RunError("the copy's receiver did not finish") from e
            if recv.returncode != 0:
                raise RunError(f"the copy's receiver failed (exit {recv.returncode})")
        t2 = time.monotonic()
        podman(DST, "container", "restore", "--import", dst, *tcp)
        t3 = time.monotonic()
        c2 = children_cpu()
        lb1 = link_bytes()
    finally:
        if recv and recv.poll() is None:
            recv.kill()
            recv.wait()
    size = os.path.getsize(src)
    if os.path.getsize(dst) != size:
        raise RunError(f"the copy is {os.path.getsize(dst)} bytes, the export {size}")
    figures = subj.check()
    conmon = restored_conmon_cpu()
    figures.update(subj.finish())
    return {
        "downtime_ms": ms(t0, t3), "total_ms": ms(t0, t3), "bytes_on_wire": 0 if floor else size, "link_bytes": lb1 - lb0,
        "checkpoint_bytes": size, "saved_bytes": 0, "rounds": 0, "final_frozen_ms": None, "stop_reason": None,
        "source_cpu_s": round(c1 - c0, 3), "target_cpu_s": round(c2 - c1 + conmon, 3),
        "target_conmon_cpu_s": round(conmon, 3), "coordinator_cpu_s": None,
        "source_agent_peak_mib": None, "target_agent_peak_mib": None,
        "phases": {"checkpoint": ms(t0, t1), ("hand-over" if floor else "copy"): ms(t1, t2), "restore": ms(t2, t3)},
        **figures,
    }


def run_tern(mode, subj, opts):
    subj.start()
    ensure_agents()
    agents = {h: agent_pid(h) for h in (SRC, DST)}
    offsets = {h: log_size(h) for h in (SRC, DST)}
    cmd = [TERN, "migrate", NAME, "--inventory", INVENTORY, "--to", DST, "--mode", mode, "--compress", opts.compress, "--json"]
    cmd += shlex.split(opts.tern_args or "")
    subj.load(manual=False)  # without reconnecting: tern keeps the client's connection
    cpu0 = {h: proc_cpu_split(p) for h, p in agents.items()}
    for p in agents.values():
        reset_hwm(p)
    lb0 = link_bytes()
    c0 = children_cpu()
    r = run_interruptible(cmd)
    c1 = children_cpu()
    lb1 = link_bytes()
    dead = [h for h, p in agents.items() if agent_pid(h) != p]
    if not dead:
        time.sleep(0.3)  # let the agents reap what they started for this migration
        cpu1 = {h: proc_cpu_split(p) for h, p in agents.items()}
        peak = {h: vm_hwm_mib(p) for h, p in agents.items()}
    try:
        j = json.loads(r.stdout)
    except ValueError:
        j = {}
    if r.returncode != 0 or j.get("outcome") != "completed" or dead:
        why = f"exit {r.returncode}, outcome {j.get('outcome')!r}"
        if dead:
            why += f"; the agent on {', '.join(dead)} died"
        logs = "\n".join(f"--- {agent_log(h)} during this run:\n{log_since(h, offsets[h])}" for h in (SRC, DST))
        raise RunError(f"{shlex.join(cmd)}: {why}\n--- stdout:\n{r.stdout.strip()}\n--- stderr:\n"
                       f"{r.stderr.strip()}\n{logs}")
    # hash-post-copy is post-copy with a base first: its report says post-copy.
    if j.get("mode") != {"hash-post-copy": "post-copy"}.get(mode, mode):
        raise RunError(f"{shlex.join(cmd)}: asked for {mode}, the report says {j.get('mode')!r}")
    try:
        figures = subj.check()
    except RunError as e:
        raise RunError(f"{e}\n--- {shlex.join(cmd)} said:\n{r.stdout.strip()}") from e
    conmon = restored_conmon_cpu()
    if subj.tcp:
        figures.update(image_bytes=j.get("image_bytes"), warnings=j.get("warnings") or [])
    figures["memory_fill_ms"] = j.get("memory_fill_ms")
    if hasattr(subj, "fill_rates"):
        figures.update(subj.fill_rates(j.get("memory_fill_ms")))
    figures.update(subj.finish())
    return {
        "downtime_ms": j["downtime_ms"], "total_ms": j["total_ms"], "bytes_on_wire": j["bytes_on_wire"],
        "link_bytes": lb1 - lb0, "checkpoint_bytes": j.get("checkpoint_bytes"),
        "saved_bytes": j.get("saved_bytes") or 0, "rounds": len(j.get("rounds") or []),
        "final_frozen_ms": j.get("final_frozen_ms"), "stop_reason": j.get("stop_reason"),
        "source_cpu_s": round(sum(cpu1[SRC]) - sum(cpu0[SRC]), 3),
        "target_cpu_s": round(sum(cpu1[DST]) - sum(cpu0[DST]) + conmon, 3),
        # The agents' own threads vs the podman/runc/CRIU processes they ran.
        "source_agent_self_cpu_s": round(cpu1[SRC][0] - cpu0[SRC][0], 3),
        "target_agent_self_cpu_s": round(cpu1[DST][0] - cpu0[DST][0], 3),
        "target_conmon_cpu_s": round(conmon, 3), "coordinator_cpu_s": round(c1 - c0, 3),
        "source_agent_peak_mib": round(peak[SRC], 1), "target_agent_peak_mib": round(peak[DST], 1),
        "phases": {p["phase"]: p["ms"] for p in j.get("phases") or []},
        "frozen": {s["step"]: s["ms"] for s in j.get("frozen") or []},
        "round_details": j.get("rounds") or [],
        **figures,
    }


def client_summary(r):
    """The client's figures for the progress log ("" without a client)."""
    if r.get("client_gap_ms") is None:
        return ""
    s = f"; client gap {r['client_gap_ms']} ms, errors {r['client_errors']}, connections {r['client_connections']}"
    if "acked" in r:
        s += f", acked {r['acked']} (verified {r['verified']})"
        if "client_reconnected" in r:
            s += f", reconnected {r['client_reconnected']}"
    if "pg_processed" in r:
        s += (f", processed {r['pg_processed']}, failed {r['pg_failed']}, aborted {r['client_aborted']}, "
              f"history rows ok {r['pg_rows_ok']}, per client {r['client_gaps_ms']}")
    if r.get("client_first_error"):
        s += f", first error: {r['client_first_error']}"
    return s


def run_one(method, workload, opts):
    subj = subject(workload, opts)
    try:
        if method in ("manual", "podman-floor"):
            return run_manual(subj, opts, floor=method == "podman-floor")
        return run_tern(method, subj, opts)
    finally:
        subj.close()


# --- the report -----------------------------------------------------------------

def fmt_stat(vals, scale=1.0, digits=0):
    """median (min..max); digits=None: as many decimals as small values need."""
    vals = [v * scale for v in vals if v is not None]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if digits is None:
        digits = 3 if med < 1 else 2 if med < 10 else 1
    if len(vals) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(vals):.{digits}f}..{max(vals):.{digits}f})"


def median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def order_key(order):
    def key(x):
        return order.index(x) if x in order else len(order)
    return key


def groups(rows):
    """(workload, link) pairs in matrix order, then methods in METHODS order."""
    wl = sorted({r["workload"] for r in rows}, key=order_key(list(WORKLOADS)))
    lk = sorted({r["link"] for r in rows}, key=order_key(list(LINKS)))
    out = []
    for w in wl:
        for l in lk:
            ms_ = sorted({r["method"] for r in rows if r["workload"] == w and r["link"] == l},
                         key=order_key(METHODS))
            if ms_:
                out.append((w, l, ms_))
    return out


def client_note(rs):
    """Where the client's connection died (or its transactions failed), in how many of the runs."""
    notes = {}

    def note(k):
        notes[k] = notes.get(k, 0) + 1
    for r in rs:
        if r.get("client_aborted"):
            note("pgbench client(s) aborted")
        if r.get("pg_failed"):
            note("failed transactions")
        if r.get("pg_rows_ok") is False:
            note("history rows != processed")
        if "acked" in r and r.get("client_errors"):
            # client_reconnected is there where the client was allowed to reconnect (manual methods).
            note("connection died" + ("" if "client_reconnected" not in r else
                                      ", reconnected" if r["client_reconnected"] else ", no reconnect"))
    return "; ".join(f"{k} ({v}/{len(rs)})" for k, v in notes.items())


def table(rows, failures, meta):
    # The client's columns only where some run has a client (the application workloads).
    client = any(r.get("client_gap_ms") is not None for r in rows)
    out = []
    if meta:
        out.append(meta + "\n")
    out += ["| workload | link | method | runs | downtime ms | total ms | MiB on the wire | MiB through the link "
            "| source CPU s | target CPU s | agent peak MiB (source / target) | downtime tern/manual "
            "| total tern/manual |" + (" client gap ms | client gap - downtime ms | client |" if client else ""),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if client else "")]
    for w, l, methods in groups(rows + failures):
        man = [r for r in rows if r["workload"] == w and r["link"] == l and r["method"] == "manual"]
        for m in methods:
            rs = [r for r in rows if r["workload"] == w and r["link"] == l and r["method"] == m]
            ratio = ["", ""]
            if m != "manual":
                for i, k in enumerate(("downtime_ms", "total_ms")):
                    a, b = median(rs, k), median(man, k)
                    ratio[i] = f"{a / b:.2f}" if a is not None and b else "n/a"
            nfail = sum(1 for f in failures if f["workload"] == w and f["link"] == l and f["method"] == m)
            runs = f"{len(rs)}" + (f" (+{nfail} failed)" if nfail else "")
            peak = "-" if m in ("manual", "podman-floor") else (
                f"{fmt_stat([r['source_agent_peak_mib'] for r in rs])} / "
                f"{fmt_stat([r['target_agent_peak_mib'] for r in rs])}")
            out.append(
                f"| {w} | {l} | {m} | {runs} | {fmt_stat([r['downtime_ms'] for r in rs])} "
                f"| {fmt_stat([r['total_ms'] for r in rs])} "
                f"| {fmt_stat([r['bytes_on_wire'] for r in rs], 1 / MIB, None)} "
                f"| {fmt_stat([r.get('link_bytes') for r in rs], 1 / MIB, None)} "
                f"| {fmt_stat([r['source_cpu_s'] for r in rs], digits=2)} "
                f"| {fmt_stat([r['target_cpu_s'] for r in rs], digits=2)} "
                f"| {peak} | {ratio[0]} | {ratio[1]} |" + (
                    f" {fmt_stat([r.get('client_gap_ms') for r in rs])} "
                    f"| {fmt_stat([r['client_gap_ms'] - r['downtime_ms'] for r in rs if r.get('client_gap_ms') is not None])} "
                    f"| {client_note(rs)} |" if client else ""))
    out += frozen_table(rows)
    out += fill_table(rows)
    if failures:
        out.append(f"\n{len(failures)} failed run(s) (errors, not data points; details on stderr):\n")
        for f in failures:
            first = f["error"].strip().splitlines()[0] if f["error"].strip() else "?"
            out.append(f"- {f['workload']} / {f['link']} / {f['method']} run {f['run'] + 1}: {first}")
    return "\n".join(out)


def fill_table(rows):
    """The price of a lazy restore: the time until all memory was on the
    target, and the counter's ticks per second then against before."""
    rs_all = [r for r in rows if r.get("memory_fill_ms")]
    if not rs_all:
        return []
    out = ["", "Memory filled in after the restore (medians): until all of it was on the target, and the "
           "counter's ticks per second during the fill against before the freeze:", "",
           "| workload | link | method | fill ms | MiB of the fill from a base | pause for the base ms "
           "| ticks/s before | ticks/s during the fill |", "|---|---|---|---|---|---|---|---|"]
    for w, l, methods in groups(rs_all):
        for m in methods:
            rs = [r for r in rs_all if r["workload"] == w and r["link"] == l and r["method"] == m]
            # hash-post-copy: the base's dump paused the container (its one round).
            base = [r["round_details"][0].get("frozen_ms") for r in rs if m == "hash-post-copy" and r.get("round_details")]
            from_base = [(r.get("saved_bytes") or 0) / 2**20 for r in rs] if m == "hash-post-copy" else []
            out.append(f"| {w} | {l} | {m} | {fmt_stat([r['memory_fill_ms'] for r in rs])} "
                       f"| {fmt_stat(from_base, digits=1) if from_base else '-'} "
                       f"| {fmt_stat(base) if base else '-'} "
                       f"| {fmt_stat([r.get('rate_before') for r in rs], digits=1)} "
                       f"| {fmt_stat([r.get('rate_fill') for r in rs], digits=1)} |")
    return out


def frozen_table(rows):
    """Where tern's downtime goes: the median of each step of the frozen
    interval (the report's `frozen`), per workload, link and method."""
    steps = []
    for r in rows:
        for s in r.get("frozen") or {}:
            if s not in steps:
                steps.append(s)
    if not steps:
        return []
    out = ["", "Where the downtime goes (medians, ms; a step a run lacks counts 0):", "",
           "| workload | link | method | " + " | ".join(steps) + " |",
           "|---|---|---|" + "---|" * len(steps)]
    for w, l, methods in groups(rows):
        for m in methods:
            rs = [r for r in rows if r["workload"] == w and r["link"] == l and r["method"] == m and r.get("frozen")]
            if not rs:
                continue
            cells = [fmt_stat([r["frozen"].get(s, 0) for r in rs]) for s in steps]
            out.append(f"| {w} | {l} | {m} | " + " | ".join(cells) + " |")
    return out


def chart(rows, path):
    py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(rows, f)
        tmp = f.name
    try:
        r = subprocess.run([py, CHART, tmp, path], capture_output=True, text=True)
    finally:
        os.remove(tmp)
    if r.returncode != 0:
        log(f"bench: the chart failed: {r.stderr.strip()}")
        return False
    log(f"bench: chart written to {path}")
    return True


def git_rev():
    r = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def binary_time():
    try:
        return datetime.datetime.fromtimestamp(os.path.getmtime(TERN)).isoformat(timespec="minutes")
    except OSError:
        return "?"


def meta_line(opts, runs, methods, skipped, started, workloads=()):
    parts = [f"Medians of {runs} run(s), (min..max); started {started}, "
             f"tern {git_rev()} (binary of {binary_time()}), kernel {os.uname().release}, {os.cpu_count()} CPUs; tern --compress "
             f"{opts.compress}, manual: podman's default export (zstd)."]
    parts.append("Links: tbf on both lab hosts' eth0 (" + "; ".join(
        f"{k}: {' '.join(v) if v else 'no qdisc'}" for k, v in LINKS.items()) + ").")
    parts.append("MiB on the wire: tern's QUIC UDP bytes / the manual archive's size; MiB through the link: "
                 "Ethernet bytes through the source's bridge port, both directions. CPU: the agents' own and "
                 "waited-for children's time (manual: the bench's podman and copy processes), plus the restored "
                 "container's conmon (runc restore, CRIU) on the target.")
    if any(w in APPS for w in workloads):
        parts.append(f"Clients on {CLIENT}, from {CLIENT_LEAD_S} s before the migration to {CLIENT_TAIL_S} s after it "
                     "(their traffic counts in the link's bytes). Client gap: redis, the longest wait for an answer "
                     "of `appclient redis` (one connection, an RPUSH every 10 ms; the manual methods' client "
                     "reconnects when its connection dies, tern's does not); postgres, the longest time between "
                     "two transactions one pgbench client completed (-c 4 -j 2, persistent connections). "
                     "Manual methods: checkpoint and restore with --tcp-established.")
    if skipped:
        parts.append(skipped)
    return "\n".join(parts)


# --- main -----------------------------------------------------------------------

def split_list(values, allowed, what):
    out = []
    for v in values or []:
        for x in v.split(","):
            x = x.strip()
            if not x:
                continue
            if x not in allowed:
                raise SystemExit(f"bench: unknown {what} {x!r} (known: {', '.join(allowed)})")
            if x not in out:
                out.append(x)
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="256MiB@20MiB/s over 1gbit, all methods, 3 runs (filters still narrow it)")
    ap.add_argument("--runs", type=int, help="repeats per (workload, link, method); default 3")
    ap.add_argument("--methods", action="append", metavar="M[,M...]",
                    help=f"default: all ({', '.join(METHODS)}); pre-copy only where soft-dirty exists")
    ap.add_argument("--tern-args", metavar="ARGS", help="extra `tern migrate` flags, e.g. \"--max-rounds 4 --max-downtime 2s\"")
    ap.add_argument("--workload", action="append", metavar="W[,W...]", help=f"default: {', '.join(DEFAULT_WORKLOADS)}; also {', '.join(APPS)}, "
                    "any NMiB@RMiB/s and redis@NMiB")
    ap.add_argument("--link", action="append", metavar="L[,L...]", help=f"default: all ({', '.join(LINKS)})")
    ap.add_argument("--compress", choices=["auto", "none", "zstd"], default="auto", help="tern's --compress (default auto, what a user gets)")
    ap.add_argument("--json", metavar="FILE", help="write every successful run as one object of a JSON array")
    ap.add_argument("--chart", metavar="FILE.png", help="downtime medians with min..max, per workload/link and method")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    ap.add_argument("--from-json", metavar="FILE", help="report rows saved earlier with --json; measure nothing")
    ap.add_argument("--pg-seconds", type=int, default=60, metavar="S",
                    help="postgres: the migration time pgbench's first -T allows for (later runs fit the longest "
                         "seen, x1.5); default 60")
    ap.add_argument("--no-cap-check", action="store_true",
                    help="postgres: try even where root lacks CAP_SYS_RESOURCE (the checkpoint then fails)")
    a = ap.parse_args(argv)
    if a.runs is not None and a.runs < 1:
        ap.error("--runs must be at least 1")
    return a


def main(argv):
    opts = parse_args(argv)
    if opts.from_json:
        with open(opts.from_json) as f:
            rows = json.load(f)
        runs = max((r.get("run", 0) for r in rows), default=0) + 1
        print(table(rows, [], f"Rows from {opts.from_json} (up to {runs} run(s) each), medians (min..max)."))
        if opts.chart:
            chart(rows, opts.chart)
        return 0

    add_custom_workloads(opts.workload)
    workloads = split_list(opts.workload, list(WORKLOADS), "workload") or (
        QUICK["workloads"] if opts.quick else list(DEFAULT_WORKLOADS))
    links = split_list(opts.link, list(LINKS), "link") or (QUICK["links"] if opts.quick else list(LINKS))
    methods = split_list(opts.methods, METHODS, "method") or list(METHODS)
    runs = opts.runs or (QUICK["runs"] if opts.quick else 3)

    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (through scripts/bench.sh)")
    if not all(os.path.exists(f"/run/netns/{h}") and os.path.exists(f"{LAB_RUN}/ns/{h}") for h in (SRC, DST)):
        raise SystemExit("bench: the lab is down; run scripts/bench.sh (it brings the lab up)")
    ensure_agents()
    if any(APPS[w][0] == "postgres" for w in workloads if w in APPS) and not opts.no_cap_check:
        why = lacks_sys_resource()
        if why:
            raise SystemExit(f"bench: {why}")
    if any(w in APPS for w in workloads):
        if not os.path.exists(f"/run/netns/{CLIENT}"):
            raise SystemExit(f"bench: the lab's client machine {CLIENT} is down; run scripts/bench.sh")
        if not os.access(APPCLIENT, os.X_OK):
            raise SystemExit(f"bench: {APPCLIENT} is missing: cargo build --release --bins")
        ensure_app_images(workloads)
    skipped = ""
    if "pre-copy" in methods:
        dt = dirty_tracking()
        missing = [f"{h}: {dt.get(h, (False, 'no answer'))[1]}" for h in (SRC, DST) if not dt.get(h, (False,))[0]]
        if missing:
            methods.remove("pre-copy")
            skipped = "pre-copy skipped: no soft-dirty memory tracking (" + "; ".join(missing) + ")."
            log(f"bench: {skipped}")
    if not methods:
        raise SystemExit("bench: no method left to run")

    total = len(links) * len(workloads) * runs * len(methods)
    log(f"bench: {total} runs: workloads {', '.join(workloads)}; links {', '.join(links)}; "
        f"methods {', '.join(methods)}; {runs} run(s) each")
    rows, failures = [], []
    interrupted = False
    t_start = time.monotonic()
    started = datetime.datetime.now().isoformat(timespec="minutes")
    n = 0
    try:
        for link in links:
            shape(link)
            for w in workloads:
                for i in range(runs):
                    # Rotate the order between runs: drift on a noisy machine hits every method alike.
                    order = methods[i % len(methods):] + methods[:i % len(methods)]
                    for m in order:
                        n += 1
                        head = (f"[{n}/{total} {time.monotonic() - t_start:5.0f}s] {w} {link} "
                                f"run {i + 1}/{runs} {m}")
                        log(f"{head} ...")
                        try:
                            r = run_one(m, w, opts)
                        except RunError as e:
                            log(f"{head}: FAILED\n{e}")
                            failures.append({"method": m, "workload": w, "link": link, "run": i, "error": str(e)})
                            ensure_agents()
                            if opts.fail_fast:
                                raise
                            continue
                        finally:
                            clean()
                        r.update(method=m, workload=w, link=link, run=i, compress=opts.compress if m in TERN_MODES
                                 else "none" if m == "podman-floor" else "zstd", at=datetime.datetime.now().isoformat(timespec="seconds"))
                        rows.append(r)
                        log(f"{head}: downtime {r['downtime_ms']} ms, total {r['total_ms']} ms, "
                            f"{r['bytes_on_wire'] / MIB:.2f} MiB, cpu {r['source_cpu_s']:.2f}/"
                            f"{r['target_cpu_s']:.2f} s, phases {r['phases']}" + client_summary(r))
    except RunError as e:
        if not opts.fail_fast:
            log(f"bench: stopping: {e}")
    except KeyboardInterrupt:
        interrupted = True
        log("bench: interrupted; unshaping the links and removing the bench container; "
            "the table below has the runs done so far")
    finally:
        unshape()
        clean()
    log(f"bench: {len(rows)} runs done, {len(failures)} failed, in {time.monotonic() - t_start:.0f} s")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(rows, f, indent=1)
        log(f"bench: rows written to {opts.json}")
    print(table(rows, failures, meta_line(opts, runs, methods, skipped, started, workloads)))
    ok = True
    if opts.chart and rows:
        ok = chart(rows, opts.chart)
    if interrupted:
        return 130
    return 1 if failures or not ok else 0


def _terminate(signum, frame):
    # Once: a second Ctrl-C or SIGTERM must not cut the cleanup short.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    # SIGINT too: bench.sh runs this in the background, where SIGINT starts out ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("bench: interrupted; unshaping the links and removing the bench container")
        unshape()
        try:
            clean()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        sys.exit(130)
