#!/usr/bin/env python3
"""shmbus vs Java Aeron (aeron:ipc) in one interleaved run; called by bench/aeron/run.sh.

Each repetition runs four groups, each one shmbus-bench case and the Aeron case of the
same kind and size back to back (the order of the two flips every repetition):
  tput 8 B     tput.shmbus (+ _pollbatch, _nostamp_pollbatch)   | tput.aeron 8
  tput 64 B    tput.shmbus, tput.shmbus_capnp (+ the two above)  | tput.aeron 64
  rtt 8 B      rtt.shmbus (+ rtt.shmbus_nostamp)                 | rtt.aeron 8
  rtt 64 B     rtt.shmbus, rtt.shmbus_capnp (+ _nostamp)         | rtt.aeron 64
shmbus-bench pins its producer (parent) and consumer (child) itself with
sched_setaffinity to --cpus; the Aeron producer (publisher / ping) and consumer
(subscriber / pong) are separate JVMs started with taskset on the same two cores. One
Java media driver (Aeron's default context: DEDICATED threads, BackoffIdleStrategy,
64 MiB IPC terms) runs unpinned for the whole run. Medians over repetitions; the
shmbus/Aeron ratios are ratios of those medians, with the median of per-repetition
(adjacent) ratios beside them.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""


class Aeron:
    def __init__(self, a):
        self.a = a
        self.dir = tempfile.mkdtemp(prefix="aeron-bench-", dir="/dev/shm")
        self.java = [a.java] + a.jvm_opts.split() + ["-cp", a.classpath, "AeronBench"]
        self.driver = subprocess.Popen(self.java + ["driver", self.dir], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.driver.stdout.readline().strip()
        if not line.startswith("READY"):
            raise RuntimeError("media driver did not start: %s %s" % (line, self.driver.stderr.read()[-2000:]))
        self.driver_info = line[len("READY"):].strip()

    def close(self):
        try:
            self.driver.stdin.close()
            self.driver.wait(timeout=30)
        except Exception:
            self.driver.kill()
        subprocess.run(["rm", "-rf", self.dir])

    def case(self, kind, size):
        a = self.a
        if kind == "tput":
            cons, prod, count, warm = "tput-sub", "tput-pub", a.messages, a.java_warmup
        else:
            cons, prod, count, warm = "rtt-pong", "rtt-ping", a.rtt_messages, a.java_rtt_warmup
        args = [self.dir, str(size), str(count), str(warm)]
        c = subprocess.Popen(["taskset", "-c", str(a.cpu_c)] + self.java + [cons] + args,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = c.stdout.readline().strip()
            if line != "READY":
                raise RuntimeError("aeron %s: consumer not ready: %s %s" % (cons, line, c.stderr.read()[-2000:]))
            p = subprocess.run(["taskset", "-c", str(a.cpu_p)] + self.java + [prod] + args,
                               capture_output=True, text=True, timeout=a.timeout)
            if p.returncode != 0:
                raise RuntimeError("aeron %s failed: %s" % (prod, p.stderr[-2000:]))
            out, err = c.communicate(timeout=a.timeout)
            if c.returncode != 0:
                raise RuntimeError("aeron %s failed: %s" % (cons, err[-2000:]))
        finally:
            if c.poll() is None:
                c.kill()
                c.wait()
        text = out if kind == "tput" else p.stdout
        rows = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
        if len(rows) != 1:
            raise RuntimeError("aeron %s %d: no result (%r)" % (kind, size, text[-500:]))
        return rows


def shmbus(a, names, size):
    cmd = [a.shmbus_bench, "--json", "--exact", "--only", ",".join(names), "--sizes", str(size),
           "--cpus", "%d,%d" % (a.cpu_p, a.cpu_c), "--messages", str(a.messages),
           "--rtt-messages", str(a.rtt_messages), "--timeout", str(a.timeout)]
    if a.capacity:
        cmd += ["--capacity", str(a.capacity)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout * 4)
    if p.returncode != 0:
        raise RuntimeError("shmbus-bench failed (%d): %s" % (p.returncode, p.stderr[-2000:]))
    rows = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    rows = [r for r in rows if r.get("name") != "target"]
    if sorted(r["name"] for r in rows) != sorted(names):
        raise RuntimeError("shmbus-bench: missing cases (%s): %s" % (names, p.stderr[-2000:]))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shmbus-bench", required=True)
    ap.add_argument("--classpath", required=True)
    ap.add_argument("--java", default="java")
    ap.add_argument("--jvm-opts", default="")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="8,64")
    ap.add_argument("--cpus", default="0,1")
    ap.add_argument("--messages", type=int, default=4_000_000)
    ap.add_argument("--rtt-messages", type=int, default=100_000)
    ap.add_argument("--java-warmup", type=int, default=2_000_000)
    ap.add_argument("--java-rtt-warmup", type=int, default=100_000)
    ap.add_argument("--timeout", type=int, default=120)
    ap.add_argument("--capacity", type=int, help="shmbus ring bytes (default: shmbus-bench's, 1 MiB)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", help="write the raw per-run results (JSON lines) here")
    ap.add_argument("--command", default="")
    a = ap.parse_args()
    if a.quick:
        a.messages, a.rtt_messages, a.java_warmup, a.java_rtt_warmup = 200_000, 5_000, 200_000, 20_000
        a.runs = min(a.runs, 1) if a.runs == 3 else a.runs
    a.cpu_p, a.cpu_c = (int(x) for x in a.cpus.split(","))
    sizes = [int(s) for s in a.sizes.split(",")]

    meta = {
        "command": a.command or " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": sh("lscpu | sed -n 's/^Model name: *//p'"),
        "cpus": sh("nproc"),
        "kernel": sh("uname -r"),
        "java": sh("%s -version 2>&1 | head -1" % a.java),
        "jvm_opts": a.jvm_opts,
        "commit": sh("git -C '%s' rev-parse --short HEAD" % os.path.dirname(os.path.abspath(__file__))),
        "load_start": open("/proc/loadavg").read().split()[:3],
        "autogroup": sh("cat /proc/self/autogroup 2>/dev/null"),
        "capacity": a.capacity,
    }
    log = lambda *m: print("vs-aeron:", *m, file=sys.stderr, flush=True)
    ae = Aeron(a)
    meta["driver"] = ae.driver_info
    log("media driver: %s; %d repetitions; cpus %d -> %d; load %.2f" % (ae.driver_info, a.runs, a.cpu_p, a.cpu_c, load1()))
    raw = []  # every row: {"run", "side", "load1", ...result}
    groups = []
    for s in sizes:
        groups.append(("tput", s, ["tput.shmbus", "tput.shmbus_pollbatch", "tput.shmbus_nostamp_pollbatch"]
                       + (["tput.shmbus_capnp"] if s == 64 else [])))
    for s in sizes:
        groups.append(("rtt", s, ["rtt.shmbus", "rtt.shmbus_nostamp"] + (["rtt.shmbus_capnp"] if s == 64 else [])))
    try:
        for r in range(a.runs):
            for kind, size, names in groups:
                sides = ["shmbus", "aeron"] if r % 2 == 0 else ["aeron", "shmbus"]
                for side in sides:
                    l1 = load1()
                    rows = shmbus(a, names, size) if side == "shmbus" else ae.case(kind, size)
                    for row in rows:
                        row.update(run=r + 1, side=side, load1=l1)
                        raw.append(row)
            log("repetition %d/%d done (load %.2f)" % (r + 1, a.runs, load1()))
    finally:
        ae.close()
    meta["load_end"] = open("/proc/loadavg").read().split()[:3]
    if a.out:
        with open(a.out, "w") as f:
            f.write(json.dumps({"meta": meta}) + "\n")
            for row in raw:
                f.write(json.dumps(row) + "\n")
    report(meta, raw, a.runs, sizes)


def report(meta, raw, runs, sizes):
    def rows(name, size):
        return [x for x in raw if x["name"] == name and x["size"] == size]

    def med(name, size, key):
        v = [x[key] for x in rows(name, size)]
        return statistics.median(v) if v else None

    def paired(num, den, size, key, invert=False):
        # median of per-repetition ratios num/den (den/num when invert)
        out = []
        for r in range(1, runs + 1):
            n = [x[key] for x in rows(num, size) if x["run"] == r]
            d = [x[key] for x in rows(den, size) if x["run"] == r]
            if n and d:
                out.append(d[0] / n[0] if invert else n[0] / d[0])
        return statistics.median(out) if out else None

    def rng(name, size, key):
        v = [x[key] for x in rows(name, size)]
        return (min(v), max(v)) if v else (0, 0)

    M = lambda x: "%.2f M" % (x / 1e6)
    print("shmbus vs Java Aeron (aeron:ipc), one interleaved run: %d repetitions, medians" % runs)
    print("machine: %s, %s CPUs, kernel %s; %s" % (meta["cpu"], meta["cpus"], meta["kernel"], meta["java"]))
    print("aeron media driver: %s; JVM options: %s" % (meta["driver"], meta["jvm_opts"]))
    if meta.get("capacity"):
        print("shmbus ring: %d B (not the default)" % meta["capacity"])
    loads = [x["load1"] for x in raw]
    print("load average (1 min): start %s, end %s; at case start min %.2f median %.2f max %.2f"
          % (meta["load_start"][0], meta["load_end"][0], min(loads), statistics.median(loads), max(loads)))
    print()
    print("| case | size | shmbus | Aeron | shmbus/Aeron | paired | shmbus range | Aeron range |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    verdict = []
    for s in sizes:
        sm, am = med("tput.shmbus", s, "msgs_per_s"), med("tput.aeron", s, "msgs_per_s")
        lo, hi = rng("tput.shmbus", s, "msgs_per_s")
        alo, ahi = rng("tput.aeron", s, "msgs_per_s")
        ratio = sm / am
        print("| throughput msg/s (window median) | %d | %s | %s | %.2fx | %.2fx | %s..%s | %s..%s |"
              % (s, M(sm), M(am), ratio, paired("tput.shmbus", "tput.aeron", s, "msgs_per_s"),
                 M(lo), M(hi), M(alo), M(ahi)))
        so, ao = med("tput.shmbus", s, "msgs_per_s_overall"), med("tput.aeron", s, "msgs_per_s_overall")
        print("| throughput msg/s (whole-run average) | %d | %s | %s | %.2fx | %.2fx | | |"
              % (s, M(so), M(ao), so / ao, paired("tput.shmbus", "tput.aeron", s, "msgs_per_s_overall")))
        for name, label in (("tput.shmbus_pollbatch", "poll_batch"),
                            ("tput.shmbus_nostamp_pollbatch", "poll_batch, stamp_frames=false")):
            pb = med(name, s, "msgs_per_s")
            if pb:
                print("| throughput msg/s, shmbus %s (info, not default) | %d | %s | %s | %.2fx | %.2fx | | |"
                      % (label, s, M(pb), M(am), pb / am, paired(name, "tput.aeron", s, "msgs_per_s")))
        limit = 1.7 if s == 64 else 1.0 if s == 8 else None
        if limit:
            verdict.append(("throughput %d B >= %.1fx Java Aeron (window median)" % (s, limit), ratio, ">=", limit,
                            ratio >= limit))
            verdict.append(("throughput %d B >= %.1fx Java Aeron (whole-run average)" % (s, limit), so / ao, ">=",
                            limit, so / ao >= limit))
    for s in sizes:
        for key, label in (("p50_ns", "p50"), ("p99_ns", "p99")):
            sm, am = med("rtt.shmbus", s, key), med("rtt.aeron", s, key)
            lo, hi = rng("rtt.shmbus", s, key)
            alo, ahi = rng("rtt.aeron", s, key)
            ratio = sm / am
            print("| round trip %s ns | %d | %.0f | %.0f | %.2fx | %.2fx | %.0f..%.0f | %.0f..%.0f |"
                  % (label, s, sm, am, ratio, paired("rtt.shmbus", "rtt.aeron", s, key), lo, hi, alo, ahi))
            ns = med("rtt.shmbus_nostamp", s, key)
            if ns:
                print("| round trip %s ns, shmbus stamp_frames=false (info, not default) | %d | %.0f | %.0f | %.2fx | %.2fx | | |"
                      % (label, s, ns, am, ns / am, paired("rtt.shmbus_nostamp", "rtt.aeron", s, key)))
            if label == "p50":
                verdict.append(("round trip p50 %d B <= Java Aeron's" % s, ratio, "<=", 1.0, ratio <= 1.0))
    print()
    if rows("tput.shmbus_capnp", 64) and rows("rtt.shmbus_capnp", 64):
        raw_t, cap_t = med("tput.shmbus", 64, "msgs_per_s"), med("tput.shmbus_capnp", 64, "msgs_per_s")
        raw_r, cap_r = med("rtt.shmbus", 64, "p50_ns"), med("rtt.shmbus_capnp", 64, "p50_ns")
        ct = raw_t / cap_t
        cr = cap_r / raw_r
        print("Cap'n Proto Quote (64 B) built and read (checked) in place vs raw 64 B, shmbus, same run:")
        print("  throughput: raw %s, Cap'n Proto %s msg/s: cost %.2fx (paired %.2fx)"
              % (M(raw_t), M(cap_t), ct, paired("tput.shmbus", "tput.shmbus_capnp", 64, "msgs_per_s")))
        print("  round trip p50: raw %.0f, Cap'n Proto %.0f ns: cost %.2fx (paired %.2fx)"
              % (raw_r, cap_r, cr, paired("rtt.shmbus_capnp", "rtt.shmbus", 64, "p50_ns")))
        verdict.append(("Cap'n Proto in place <= 1.3x raw (throughput)", ct, "<=", 1.3, ct <= 1.3))
        verdict.append(("Cap'n Proto in place <= 1.3x raw (round trip p50)", cr, "<=", 1.3, cr <= 1.3))
        print()
    print("targets (issue 8, in-run ratios):")
    for name, v, op, lim, met in verdict:
        print("  %-60s %6.2fx  (%s %.1f)  %s" % (name, v, op, lim, "MET" if met else "MISSED"))
    # The run itself keeps two cores busy (about 2 on the 1-minute average once it has
    # run a while), so the load that tells of other work is the one before it started.
    if float(meta["load_start"][0]) >= 1.5:
        print("note: the 1-minute load average was %s when the run started (other work on the machine):"
              " figures are provisional" % meta["load_start"][0])


if __name__ == "__main__":
    main()
