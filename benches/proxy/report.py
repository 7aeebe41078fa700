#!/usr/bin/env python3
"""Helpers of benches/proxy.sh (standard library only).

  report.py sample NAME=PID[,PID...] ...   CPU time and memory (PSS) of process groups, and every
                                           CPU's busy time, as one JSON line
  report.py rps KIND FILE                  successful requests per second of a load-generator run
  report.py check KIND FILE                one line on stderr and exit 1 unless the run had answers
  report.py report RESULTS_DIR             the tables, then the summary as the last line (JSON)

KIND is `oha` (its JSON output), `ghz` (its JSON output, with per-request details) or `redis`
(redis-benchmark --csv). In `sample`, the group named `app` is the application; every other
group is one proxy instance.

RESULTS_DIR holds meta.env and PROTO/MODE/repN/ (one directory per repetition of a mode).
"""

import csv
import json
import math
import os
import statistics
import sys
import time
from collections import Counter

CLK_TCK = os.sysconf("SC_CLK_TCK")
TRACING = ("skein-trace0", "skein-trace1", "skein-trace100")
# The same Skein modes run with another build's proxies (SKEIN_BASELINE_BIN): an A/B in one run.
BASELINE_OF = {"skein": "skein-base", "skein-mtls": "skein-mtls-base"}
MODES = ("direct", "direct-rules", "skein", "skein-mtls", "skein-mtls-h1", "skein-base", "skein-mtls-base") + TRACING + ("nginx", "haproxy")
BASELINES = ("direct", "direct-rules")
PROXIES = ("skein", "skein-mtls", "skein-mtls-h1", "skein-base", "skein-mtls-base") + TRACING + ("nginx", "haproxy")
# The Skein modes judged against the goals (the tracing modes are compared with `skein` instead).
JUDGED = ("skein", "skein-mtls")
HTTP_PROTOCOLS = ("h1", "h2", "grpc")
PROTOCOLS = HTTP_PROTOCOLS + ("redis",)
APP_GROUP = "app"

# Issue 16's goals, per proxy (one hop), 1 KiB, one worker, measured side by side in one run.
GOAL_LATENCY_VS_NGINX = 0.6  # added p50 and p99 per hop <= 0.6x nginx's (and <= HAProxy's)
GOAL_CPU_PER_1K = {"h1": 0.05, "h2": 0.07, "grpc": 0.07}  # core per 1,000 rps per proxy
GOAL_MAX_VS_HAPROXY = 1.1  # max rps through two hops >= 1.1x HAProxy's
GOAL_PSS_MIB = 10.0  # per proxy, under load
# Opaque TCP (redis-benchmark GET and SET through two sidecars): >= HAProxy in TCP mode.

# A CPU at least this busy over a closed-loop maximum run is what capped it.
SATURATED = 0.9


# ---------------------------------------------------------------------------------------------
# /proc sampling


def pss_kb(smaps_rollup):
    """The proportional set size (kB) in the text of /proc/PID/smaps_rollup; 0 without one.
    PSS splits every shared page among the processes mapping it, so the PSS of nginx's master
    and worker add up to their real footprint (their RSS would count the shared pages twice)."""
    for line in smaps_rollup.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Pss":
            try:
                return int(value.split()[0])
            except (IndexError, ValueError):
                return 0
    return 0


def cpu_times(proc_stat):
    """{cpu number (str): [busy jiffies, total jiffies]} from the text of /proc/stat. Busy is
    everything but idle and iowait: user, nice, system, irq, softirq and steal."""
    out = {}
    for line in proc_stat.splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
            continue
        try:
            values = [int(v) for v in fields[1:9]]
        except ValueError:
            continue
        total = sum(values)
        out[fields[0][3:]] = [total - values[3] - values[4], total]
    return out


def _children_map():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _descendants(pids):
    children = _children_map()
    seen, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(children.get(pid, []))
    return seen


def _proc(pid):
    """(cpu seconds, VmRSS kB, PSS kB) of one process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            pss = pss_kb(f.read())
    except OSError:
        pss = 0
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of stat (utime, stime); `fields` starts at field 3.
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = 0
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            rss = int(value.split()[0])
    return cpu, rss, pss


def group_totals(procs):
    """One proxy's (or the app's) figures summed over its processes, e.g. nginx's master and
    worker: CPU seconds, RSS kB (for reference: it counts shared pages once per process) and PSS
    kB. `procs`: (cpu, rss, pss) per process, None for one that is gone."""
    procs = [p for p in procs if p is not None]
    return {
        "cpu_s": sum(p[0] for p in procs),
        "rss_kb": sum(p[1] for p in procs),
        "pss_kb": sum(p[2] for p in procs),
        "processes": len(procs),
    }


def sample(args):
    groups = {}
    for arg in args:
        name, _, pids = arg.partition("=")
        tops = [int(p) for p in pids.split(",") if p]
        groups[name] = group_totals(_proc(pid) for pid in _descendants(tops))
    try:
        with open("/proc/stat") as f:
            cpus = cpu_times(f.read())
    except OSError:
        cpus = {}
    print(json.dumps({"t": time.monotonic(), "groups": groups, "cpus": cpus}))


# ---------------------------------------------------------------------------------------------
# Load-generator output


def _percentile(sorted_values, q):
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def parse_redis_csv(text):
    """{test: {"rps", "p50_ms", "p99_ms"}} from redis-benchmark --csv (7.x columns: test, rps,
    avg/min/p50/p95/p99/max latency in ms); rows it cannot read are left out."""
    rows = list(csv.reader(text.splitlines()))
    if not rows or "test" not in rows[0]:
        return {}
    header = rows[0]
    out = {}
    for row in rows[1:]:
        if len(row) != len(header):
            continue
        r = dict(zip(header, row))
        try:
            out[r["test"]] = {
                "rps": float(r["rps"]),
                "p50_ms": float(r["p50_latency_ms"]),
                "p99_ms": float(r["p99_latency_ms"]),
            }
        except (KeyError, ValueError):
            continue
    return out


def summarize(kind, path):
    """{"rps", "ok", "errors", "p50_ms", "p99_ms", "p999_ms"} of one run (redis: per test)."""
    with open(path) as f:
        text = f.read()
    if kind == "redis":
        tests = parse_redis_csv(text)
        out = {"ok": len([t for t in ("GET", "SET") if t in tests]), "errors": 0}
        for test in ("GET", "SET"):
            for key, value in tests.get(test, {}).items():
                out[f"{test.lower()}_{key}"] = value
        out["rps"] = out.get("get_rps", 0.0)
        return out
    data = json.loads(text)
    if kind == "oha":
        summary = data.get("summary", {})
        statuses = data.get("statusCodeDistribution") or {}
        ok = sum(n for code, n in statuses.items() if str(code).startswith("2"))
        other = sum(n for code, n in statuses.items() if not str(code).startswith("2"))
        # Requests cut off by the end of the run (-z) are not failures.
        errors = other + sum(
            n for what, n in (data.get("errorDistribution") or {}).items() if "deadline" not in what
        )
        total_s = summary.get("total") or 0
        pct = data.get("latencyPercentiles") or {}

        def ms(key):
            value = pct.get(key)
            return None if value is None else value * 1000.0

        return {
            "rps": ok / total_s if total_s else 0.0,
            "ok": ok,
            "errors": errors,
            "p50_ms": ms("p50"),
            "p99_ms": ms("p99"),
            "p999_ms": ms("p99.9"),
        }
    if kind == "ghz":
        details = data.get("details") or []
        ok_lat = sorted(d["latency"] / 1e6 for d in details if d.get("status") == "OK")
        ok = len(ok_lat)
        errors = len(details) - ok
        total_s = (data.get("total") or 0) / 1e9
        return {
            "rps": ok / total_s if total_s else 0.0,
            "ok": ok,
            "errors": errors,
            "p50_ms": _percentile(ok_lat, 50),
            "p99_ms": _percentile(ok_lat, 99),
            "p999_ms": _percentile(ok_lat, 99.9),
        }
    raise SystemExit(f"report.py: unknown load generator {kind!r}")


# ---------------------------------------------------------------------------------------------
# Pure figures: spread over repetitions, what capped a maximum, verdicts


def spread(values):
    """{"median", "min", "max", "n"} of the figures that exist, or None without any."""
    vals = sorted(v for v in values if v is not None and not isinstance(v, bool))
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "n": len(vals)}


def _const(value):
    """A fixed bound as a spread (a goal, not a measurement)."""
    return {"median": value, "min": value, "max": value, "n": 1}


def med(s):
    return None if s is None else s["median"]


def limit_of(loadgen_busy, server_busy, app_cores, proxy_cores, loadgen_cores=None):
    """What capped a closed-loop maximum: each CPU that was (nearly) full over the run (busy:
    its /proc/stat share, everything on it) and, on the CPU the app shares with the proxies,
    whoever used more of it. A full CPU whose benchmark processes used under half of it was
    taken by other work on the machine: "other load". "no CPU full" means the round trips
    (latency x connections in flight) set the rate."""
    full = []
    if loadgen_busy is not None and loadgen_busy >= SATURATED:
        other = loadgen_cores is not None and loadgen_cores < loadgen_busy / 2
        full.append("other load (loadgen CPU)" if other else "loadgen")
    if server_busy is not None and server_busy >= SATURATED:
        ours = (app_cores or 0) + (proxy_cores or 0)
        if app_cores is not None and ours < server_busy / 2:
            full.append("other load (server CPU)")
        else:
            full.append("proxy CPU" if (proxy_cores or 0) > (app_cores or 0) else "app CPU")
    return "+".join(full) if full else "no CPU full"


def tally(labels):
    """"loadgen 3/5, proxy CPU 2/5"-style summary of per-repetition labels, most frequent first."""
    labels = [label for label in labels if label]
    if not labels:
        return None
    counts = Counter(labels).most_common()
    if len(counts) == 1 and len(labels) == 1:
        return counts[0][0]
    return ", ".join(f"{label} {n}/{len(labels)}" for label, n in counts)


def _ratio(a, b):
    """a / b, or None where that means nothing (a figure missing, or not positive: an added
    latency below zero is noise, and dividing by it would flip the comparison)."""
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return a / b


def _diff(a, b):
    return None if a is None or b is None else a - b


def verdict(value, bound, at_most, value_spread=None, bound_spread=None, factor=1.0):
    """(met, conclusive) of `value <= bound` (at_most) or `value >= bound`; met None when either
    is missing. With spreads, conclusive is False when the two min..max ranges (the bound's
    scaled by factor) overlap: the repetitions do not separate them."""
    if value is None or bound is None:
        return None, None
    met = value <= bound if at_most else value >= bound
    conclusive = True
    if value_spread and bound_spread and (value_spread["n"] > 1 or bound_spread["n"] > 1):
        lo, hi = sorted((bound_spread["min"] * factor, bound_spread["max"] * factor))
        conclusive = value_spread["max"] < lo or value_spread["min"] > hi
    return met, conclusive


# ---------------------------------------------------------------------------------------------
# Collecting one repetition, then a mode over its repetitions


def _read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _load_sample(path):
    text = _read(path)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _busy(before, after, cpu):
    a, b = before.get("cpus", {}).get(str(cpu)), after.get("cpus", {}).get(str(cpu))
    if not a or not b or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


def _usage(before, after, rps, loadgen_cpu, server_cpu):
    """CPU and memory of the proxies and the app over one run, and how busy the two CPUs were."""
    if not before or not after:
        return {}
    wall = after["t"] - before["t"]
    if wall <= 0:
        return {}

    def cores(group):
        g = after["groups"].get(group)
        return None if g is None else (g["cpu_s"] - before["groups"].get(group, {}).get("cpu_s", 0)) / wall

    out = {
        "app_cpu_cores": cores(APP_GROUP),
        "loadgen_busy": _busy(before, after, loadgen_cpu),
        "server_busy": _busy(before, after, server_cpu),
    }
    proxies = sorted(g for g in after["groups"] if g != APP_GROUP)
    if proxies:
        total = sum(cores(g) for g in proxies)
        per_1k = total / (rps / 1000.0) if rps > 0 else None
        out.update(
            {
                "proxies": len(proxies),
                "proxy_cpu_cores": total,
                "cpu_per_1k_rps": per_1k,
                "cpu_per_1k_rps_per_proxy": per_1k / len(proxies) if per_1k is not None else None,
                # The larger of the two instances (they differ: the client side does more).
                "pss_mib_per_proxy": max(after["groups"][g].get("pss_kb", 0) for g in proxies) / 1024.0,
            }
        )
    return out


def _times_s(text):
    """Seconds of a `times` field such as 1m2.345s."""
    minutes, _, seconds = text.rstrip("s").partition("m")
    return int(minutes) * 60 + float(seconds)


def _loadgen(path):
    """CPU cores the load generator used over its run (from proxy.sh's `times` bracket)."""
    text = _read(path)
    if not text:
        return {}
    fields = text.split()
    if len(fields) != 6:
        return {}
    t0, t1 = float(fields[0].replace(",", ".")), float(fields[1].replace(",", "."))
    cpu = sum(_times_s(f) for f in fields[4:6]) - sum(_times_s(f) for f in fields[2:4])
    return {"loadgen_cpu_cores": cpu / (t1 - t0), "wall_s": t1 - t0} if t1 > t0 else {}


def _skein_handling(rdir):
    """How the Skein proxies treated the traffic, from their /metrics: HTTP requests counted or not."""
    requests = tls = 0.0
    seen = False
    for side in ("client", "server"):
        text = _read(os.path.join(rdir, f"metrics-{side}.txt"))
        if not text:
            continue
        seen = True
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            series, _, value = line.rpartition(" ")
            name = series.split("{", 1)[0]
            if name.endswith("requests_total"):
                try:
                    requests += float(value)
                    if 'tls="true"' in series:
                        tls += float(value)
                except ValueError:
                    pass
    if not seen:
        return None
    if requests > 0:
        over = f", {tls:.0f} of them inbound over mTLS" if tls > 0 else ""
        return f"HTTP-aware ({requests:.0f} requests counted in the proxies' /metrics{over})"
    return "opaque TCP forwarding (no HTTP request counted in the proxies' /metrics)"


def collect_rep(rdir, proto, meta):
    """One repetition of one mode: its status and every run's figures."""
    kind = {"grpc": "ghz", "redis": "redis"}.get(proto, "oha")
    entry = {"status": _read(os.path.join(rdir, "status"), "failed: did not finish")}
    note = _read(os.path.join(rdir, "note"))
    if note:
        entry["path"] = note
    handling = _skein_handling(rdir)
    if handling:
        entry["handled_as"] = handling
    loadgen_cpu, server_cpu = meta.get("loadgen_cpu", "0"), meta.get("server_cpu", "1")
    runs = {}
    ext = ".csv" if kind == "redis" else ".json"
    for name in sorted(os.listdir(rdir)):
        if not name.endswith(ext) or name.startswith("warmup"):
            continue
        run = name[: -len(ext)]
        try:
            s = summarize(kind, os.path.join(rdir, name))
        except (OSError, ValueError, KeyError) as err:
            runs[run] = {"error": f"unreadable output: {err}"}
            continue
        target = _read(os.path.join(rdir, run + ".target"))
        if target:
            s["target_rps"] = float(target)
        s.update(_loadgen(os.path.join(rdir, run + ".loadgen")))
        before = _load_sample(os.path.join(rdir, run + ".before"))
        after = _load_sample(os.path.join(rdir, run + ".after"))
        rps = s.get("rps", 0.0)
        requests = _read(os.path.join(rdir, run + ".requests"))
        if requests and before and after and after["t"] > before["t"]:
            # redis-benchmark: every request of both tests over the whole run.
            rps = float(requests) / (after["t"] - before["t"])
        s.update(_usage(before, after, rps, loadgen_cpu, server_cpu))
        busy = s.get("loadgen_busy")
        s["limit"] = limit_of(
            s.get("loadgen_cpu_cores") if busy is None else busy,
            s.get("server_busy"),
            s.get("app_cpu_cores"),
            s.get("proxy_cpu_cores"),
            s.get("loadgen_cpu_cores"),
        )
        runs[run] = s
    entry["runs"] = runs
    return entry


# Per-run figures aggregated over the repetitions.
RUN_FIELDS = (
    "target_rps", "rps", "p50_ms", "p99_ms", "p999_ms", "errors",
    "cpu_per_1k_rps_per_proxy", "cpu_per_1k_rps", "pss_mib_per_proxy", "proxy_cpu_cores",
    "loadgen_cpu_cores", "app_cpu_cores", "loadgen_busy", "server_busy",
    "get_rps", "set_rps", "get_p50_ms", "get_p99_ms", "set_p50_ms", "set_p99_ms",
)  # fmt: skip


def aggregate(reps):
    """A mode over its repetitions ({rep number: collect_rep entry}): the status, and every
    figure of every run as a spread over the repetitions that succeeded."""
    ok = {n: e for n, e in reps.items() if e["status"].startswith("ok")}
    out = {"reps": len(reps), "ok_reps": len(ok)}
    failed = [e["status"] for e in reps.values() if not e["status"].startswith("ok")]
    if not ok:
        out["status"] = failed[0] if failed else "unavailable: did not run"
        return out
    out["status"] = "ok" if not failed else f"ok in {len(ok)} of {len(reps)} repetitions (other: {failed[0]})"
    first = ok[min(ok)]
    for key in ("path", "handled_as"):
        if first.get(key):
            out[key] = first[key]
    runs = {}
    for run in sorted({r for e in ok.values() for r in e["runs"]}):
        got = [e["runs"][run] for e in ok.values() if run in e["runs"] and "error" not in e["runs"][run]]
        if not got:
            runs[run] = {"error": next(e["runs"][run]["error"] for e in ok.values() if run in e["runs"])}
            continue
        runs[run] = {k: s for k in RUN_FIELDS if (s := spread([g.get(k) for g in got])) is not None}
        runs[run]["limit"] = tally([g.get("limit") for g in got])
        runs[run]["limits"] = [g.get("limit") for g in got]
    out["runs"] = runs
    # Memory under load: the larger proxy's PSS at the end of any run, per repetition.
    out["pss_under_load_mib"] = spread(
        [max((r.get("pss_mib_per_proxy") or 0) for r in e["runs"].values()) or None for e in ok.values()]
    )
    return out


def added_per_hop(mode_reps, direct_reps, run="r1000"):
    """{p50, p99, p999: spread} of (mode - direct) / 2 at a fixed rate, paired by repetition
    (the same round of the run), over the repetitions where both succeeded."""
    out = {}
    for key in ("p50", "p99", "p999"):
        values = []
        for n, e in mode_reps.items():
            d = direct_reps.get(n)
            if not d or not e["status"].startswith("ok") or not d["status"].startswith("ok"):
                continue
            a = e["runs"].get(run, {}).get(key + "_ms")
            b = d["runs"].get(run, {}).get(key + "_ms")
            if a is not None and b is not None:
                values.append((a - b) / 2.0)
        s = spread(values)
        if s:
            out[key] = s
    return out


def fig(agg, run, field):
    """The spread of one figure of one run of an aggregated mode (None when missing)."""
    if not agg:
        return None
    return agg.get("runs", {}).get(run, {}).get(field)


def goals(proto, po):
    """Issue 16's goals for each judged Skein mode of one protocol: a list of {mode, goal,
    value, bound, met, conclusive, note} (met None: a figure is missing)."""
    rows = []
    nginx, haproxy = po.get("nginx"), po.get("haproxy")
    for mode in JUDGED:
        m = po.get(mode)
        if not m or not m.get("status", "").startswith("ok"):
            continue

        def add(goal, value_s, bound_s, at_most, factor=1.0, note=None, spec="{:.3f}"):
            value, bound = med(value_s), med(bound_s)
            bound = None if bound is None else bound * factor
            met, conclusive = verdict(value, bound, at_most, value_s, bound_s, factor)
            rows.append(
                {"mode": mode, "goal": goal, "value": value, "bound": bound, "met": met,
                 "conclusive": conclusive, "note": note, "spec": spec}
            )  # fmt: skip

        if proto == "redis":
            for test in ("get", "set"):
                add(
                    f"opaque TCP {test.upper()} rps >= HAProxy tcp mode",
                    fig(m, "redis", f"{test}_rps"), fig(haproxy, "redis", f"{test}_rps"), False, spec="{:.0f}",
                )
            add(f"PSS per proxy under load <= {GOAL_PSS_MIB:g} MiB", m.get("pss_under_load_mib"), _const(GOAL_PSS_MIB), True, spec="{:.1f}")
            continue
        hops = m.get("added_per_hop", {})
        for key, label in (("p50", "p50"), ("p99", "p99")):
            add(
                f"added {label} per hop at 1k rps <= {GOAL_LATENCY_VS_NGINX:g}x nginx's",
                hops.get(key), (nginx or {}).get("added_per_hop", {}).get(key), True, GOAL_LATENCY_VS_NGINX,
            )
            add(
                f"added {label} per hop at 1k rps <= HAProxy's",
                hops.get(key), (haproxy or {}).get("added_per_hop", {}).get(key), True,
            )
        cpu_goal = GOAL_CPU_PER_1K[proto]
        beside = ", ".join(
            f"{label} {_fmt(med(fig(m, run, 'cpu_per_1k_rps_per_proxy')))}"
            for run, label in (("r50", "at 50% of max"), ("r80", "at 80% of max"))
            if fig(m, run, "cpu_per_1k_rps_per_proxy")
        )
        add(
            f"CPU per 1k rps per proxy at 1k rps <= {cpu_goal:g} core",
            fig(m, "r1000", "cpu_per_1k_rps_per_proxy"), _const(cpu_goal), True,
            note=beside or None,
        )
        note = None
        capped = [label for label in (fig(haproxy, "max", "limits") or []) if "loadgen" in (label or "").split("+")]
        if capped:
            note = (
                f"HAProxy's maximum hit the load generator's CPU in {len(capped)} of"
                f" {len(fig(haproxy, 'max', 'limits'))} repetitions: a lower bound"
            )
        add(
            f"max rps through two hops >= {GOAL_MAX_VS_HAPROXY:g}x HAProxy's",
            fig(m, "max", "rps"), fig(haproxy, "max", "rps"), False, GOAL_MAX_VS_HAPROXY, note, "{:.0f}",
        )
        add(
            f"PSS per proxy under load <= {GOAL_PSS_MIB:g} MiB",
            m.get("pss_under_load_mib"), _const(GOAL_PSS_MIB), True, spec="{:.1f}",
        )
    return rows


# ---------------------------------------------------------------------------------------------
# The report


def _round(value, digits=4):
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _fmt(value, spec="{:.3f}"):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if spec == "{:.3f}" and abs(value) >= 10:
        # Milliseconds of a queueing tail: fewer decimals, so the columns keep their width.
        spec = "{:.1f}" if abs(value) < 100 else "{:.0f}"
    return spec.format(value)


def _range(s, spec):
    """"min..max" of a spread over more than one repetition whose figures differ, else ""."""
    if not s or s["n"] < 2:
        return ""
    lo, hi = _fmt(s["min"], spec), _fmt(s["max"], spec)
    return "" if lo == hi else f"{lo}..{hi}"


def _pct(s):
    """A spread of cores (or busy fractions) as percentages."""
    return None if s is None else {k: (v * 100 if k != "n" else v) for k, v in s.items()}


def collect(results):
    meta = {}
    for line in (_read(os.path.join(results, "meta.env"), "") or "").splitlines():
        key, _, value = line.partition("=")
        if key:
            meta[key] = value
    out, per_rep = {}, {}
    for proto in PROTOCOLS:
        pdir = os.path.join(results, proto)
        if not os.path.isdir(pdir):
            continue
        reps_of = {}
        for mode in MODES:
            mdir = os.path.join(pdir, mode)
            if not os.path.isdir(mdir):
                continue
            reps = {}
            for name in os.listdir(mdir):
                if name.startswith("rep") and name[3:].isdigit():
                    reps[int(name[3:])] = collect_rep(os.path.join(mdir, name), proto, meta)
            reps_of[mode] = reps
        po = {mode: aggregate(reps) for mode, reps in reps_of.items()}
        direct = reps_of.get("direct", {})
        for mode, reps in reps_of.items():
            if mode != "direct" and direct:
                po[mode]["added_per_hop"] = added_per_hop(reps, direct)
        po["goals"] = goals(proto, po)
        if proto in HTTP_PROTOCOLS:
            mtls = _mtls_vs_plaintext(po)
            if mtls:
                po["mtls_vs_plaintext"] = mtls
            tracing = _tracing_vs_plain(po)
            if tracing:
                po["tracing_vs_plain"] = tracing
            carried = _compare(po, "skein-mtls", "skein-mtls-h1")
            if carried:
                po["carried_vs_http1"] = carried
            baseline = _baseline_comparisons(po)
            if baseline:
                po["vs_baseline_build"] = baseline
        out[proto] = po
        per_rep[proto] = reps_of
    return meta, out, per_rep


def _ok(entry):
    return bool(entry) and entry.get("status", "").startswith("ok")


def _measured_modes(po):
    """Each mode that ran, in table order, with its figures; one that failed is printed as a
    line with its status instead."""
    for mode in MODES:
        agg = po.get(mode)
        if not agg:
            continue
        if not _ok(agg):
            print(f"{mode:<14} {agg['status']}")
            continue
        yield mode, agg


def _mtls_vs_plaintext(p):
    """skein-mtls against skein (plaintext) of the same run (medians): what mutual TLS between
    the sidecars costs. Latencies in ms; the new-connection runs price one handshake."""
    plain, mtls = p.get("skein"), p.get("skein-mtls")
    if not _ok(plain) or not _ok(mtls):
        return None

    def m(agg, run, field):
        return med(fig(agg, run, field))

    out = {
        "added_at_1000_ms": {k: _diff(m(mtls, "r1000", k + "_ms"), m(plain, "r1000", k + "_ms")) for k in ("p50", "p99", "p999")},
        "cpu_per_1k_rps_per_proxy": {
            "plaintext": m(plain, "r1000", "cpu_per_1k_rps_per_proxy"),
            "mtls": m(mtls, "r1000", "cpu_per_1k_rps_per_proxy"),
        },
        "max_rps": {"plaintext": m(plain, "max", "rps"), "mtls": m(mtls, "max", "rps")},
    }
    for key in ("cpu_per_1k_rps_per_proxy", "max_rps"):
        out[key]["ratio"] = _ratio(out[key]["mtls"], out[key]["plaintext"])
    for kind in ("tcp", "http"):
        run = f"conn-{kind}"
        if fig(plain, run, "rps") is None or fig(mtls, run, "rps") is None:
            continue
        out[f"new_connection_{kind}"] = {
            "p50_ms_added": _diff(m(mtls, run, "p50_ms"), m(plain, run, "p50_ms")),
            "p99_ms_added": _diff(m(mtls, run, "p99_ms"), m(plain, run, "p99_ms")),
            # CPU ms per connection, both proxies together (CPU per 1,000 rps = CPU ms per request).
            "cpu_ms_per_connection_added": _diff(m(mtls, run, "cpu_per_1k_rps"), m(plain, run, "cpu_per_1k_rps")),
        }
    return out


def _compare(p, new, old):
    """Mode `new` against mode `old` of the same run, medians: max rps, CPU per 1,000 rps per proxy
    at 1,000 rps and at 50% / 80% of the max, PSS per proxy under load (each with new/old), and
    the latency `new` adds over `old` at 1,000 rps (ms, both proxies)."""
    after, before = p.get(new), p.get(old)
    if not _ok(after) or not _ok(before):
        return None

    def m(agg, run, field):
        return med(fig(agg, run, field))

    out = {"max_rps": {"old": m(before, "max", "rps"), "new": m(after, "max", "rps")}}
    for run in ("r1000", "r50", "r80"):
        out[f"cpu_per_1k_rps_per_proxy_{run}"] = {
            "old": m(before, run, "cpu_per_1k_rps_per_proxy"),
            "new": m(after, run, "cpu_per_1k_rps_per_proxy"),
        }
    out["pss_under_load_mib"] = {"old": med(before.get("pss_under_load_mib")), "new": med(after.get("pss_under_load_mib"))}
    for figures in out.values():
        figures["ratio"] = _ratio(figures["new"], figures["old"])
    out["added_at_1000_ms"] = {k: _diff(m(after, "r1000", k + "_ms"), m(before, "r1000", k + "_ms")) for k in ("p50", "p99")}
    return out


def _baseline_comparisons(p):
    """Each Skein mode against the same mode run with the baseline build's proxies."""
    out = {mode: _compare(p, mode, base) for mode, base in BASELINE_OF.items()}
    return {mode: c for mode, c in out.items() if c} or None


def _tracing_vs_plain(p):
    """The tracing modes against skein (no exporter) of the same run, medians: CPU per 1,000 rps
    and PSS per proxy at 1,000 rps, the max and p99, at each sampling percentage."""
    plain = p.get("skein")
    if not _ok(plain):
        return None

    def m(agg, run, field):
        return med(fig(agg, run, field))

    out = {}
    for mode in TRACING:
        entry = p.get(mode)
        if not _ok(entry):
            continue
        out[mode] = {
            "cpu_per_1k_rps_per_proxy": m(entry, "r1000", "cpu_per_1k_rps_per_proxy"),
            "cpu_ratio": _ratio(m(entry, "r1000", "cpu_per_1k_rps_per_proxy"), m(plain, "r1000", "cpu_per_1k_rps_per_proxy")),
            "pss_mib_per_proxy": m(entry, "r1000", "pss_mib_per_proxy"),
            "pss_added_mib": _diff(m(entry, "r1000", "pss_mib_per_proxy"), m(plain, "r1000", "pss_mib_per_proxy")),
            "max_rps_ratio": _ratio(m(entry, "max", "rps"), m(plain, "max", "rps")),
            "added_p99_at_1000_ms": _diff(m(entry, "r1000", "p99_ms"), m(plain, "r1000", "p99_ms")),
        }
    if not out:
        return None
    out["skein"] = {
        "cpu_per_1k_rps_per_proxy": m(plain, "r1000", "cpu_per_1k_rps_per_proxy"),
        "pss_mib_per_proxy": m(plain, "r1000", "pss_mib_per_proxy"),
    }
    return out


class Table:
    """Fixed-width columns; each row is printed with its medians, then (when some figure varied
    over the repetitions) a second line with each figure's min..max under it."""

    def __init__(self, columns):
        self.columns = columns  # [(title, width, align)]

    def header(self):
        print(self._line([c[0] for c in self.columns]))

    def _line(self, cells):
        parts = []
        for (_, width, align), cell in zip(self.columns, cells):
            parts.append(f"{cell:<{width}}" if align == "<" else f"{cell:>{width}}")
        return " ".join(parts).rstrip()

    def row(self, cells):
        """cells: plain strings, or (spread, spec[, suffix]) shown as median (+ suffix) and range."""
        first, second = [], []
        for cell in cells:
            if isinstance(cell, tuple):
                s, spec, *suffix = cell
                first.append(_fmt(med(s), spec) + "".join(suffix))
                second.append(_range(s, spec))
            else:
                first.append(cell)
                second.append("")
        print(self._line(first))
        if any(second):
            print(self._line(second))


RUN_LABELS = {
    "max": "max (closed)", "r1000": "1000 rps", "r50": "50% of max", "r80": "80% of max", "redis": "redis-benchmark",
}  # fmt: skip
RUN_ORDER = ("max", "r1000", "r50", "r80")


def _print_http(proto, po, meta):
    p = print
    t = Table(
        [("mode", 14, "<"), ("run", 12, "<"), ("target", 12, ">"), ("achieved", 12, ">"), ("p50", 12, ">"),
         ("p99", 12, ">"), ("p99.9", 12, ">"), ("errors", 7, ">"), ("CPU/1k/proxy", 12, ">"),
         ("PSS MiB/px", 11, ">"), ("loadgen%", 9, ">"), ("app%", 9, ">"), ("proxies%", 9, ">"),
         ("CPU L/S%", 9, ">"), ("limit", 12, "<")]
    )  # fmt: skip
    t.header()
    flags = set()
    for mode, agg in _measured_modes(po):
        for run in RUN_ORDER:
            r = agg["runs"].get(run)
            if r is None:
                continue
            if "error" in r:
                p(f"{mode:<14} {RUN_LABELS[run]:<12} {r['error']}")
                continue
            short = ""
            if r.get("target_rps") and r.get("rps") and r["rps"]["median"] < 0.95 * r["target_rps"]["median"]:
                short = "!"
                flags.add("!")
            lb, sb = med(r.get("loadgen_busy")), med(r.get("server_busy"))
            busy = f"{_fmt(lb and lb * 100, '{:.0f}')}/{_fmt(sb and sb * 100, '{:.0f}')}"
            closed = run == "max"  # closed-loop latencies are queueing at saturation: not shown
            t.row(
                [mode, RUN_LABELS[run], (r.get("target_rps"), "{:.0f}"), (r.get("rps"), "{:.0f}", short),
                 "" if closed else (r.get("p50_ms"), "{:.3f}"), "" if closed else (r.get("p99_ms"), "{:.3f}"),
                 "" if closed else (r.get("p999_ms"), "{:.3f}"), (r.get("errors"), "{:.0f}"),
                 (r.get("cpu_per_1k_rps_per_proxy"), "{:.3f}"), (r.get("pss_mib_per_proxy"), "{:.1f}"),
                 (_pct(r.get("loadgen_cpu_cores")), "{:.0f}"), (_pct(r.get("app_cpu_cores")), "{:.0f}"),
                 (_pct(r.get("proxy_cpu_cores")), "{:.0f}"), busy, (r.get("limit") or "") if closed else ""]
            )  # fmt: skip
        if agg.get("path"):
            handled = f"; {agg['handled_as']}" if agg.get("handled_as") else ""
            p(f"{'':<14} path: {agg['path']}{handled}")
    if "!" in flags:
        p("  ! achieved under 95% of the target rate: the path (or the load generator) could not sustain it")
    p(
        "  loadgen%/app%/proxies%: CPU of the load generator, the app, both proxies together (100% = one core);"
        " CPU L/S%: how busy the load generator's CPU and the app-and-proxies CPU were (everything on them)"
    )
    p(
        f"  limit (max run): a CPU at least {SATURATED:.0%} busy and, on the shared one, whether the proxies or the app"
        " used more of it ('other load': the benchmark used under half of that CPU); 'no CPU full': the round trips set the rate"
    )
    p("")
    s = Table(
        [("summary", 14, "<"), ("max rps", 12, ">"), ("limit at max", 20, "<"), ("+p50/hop", 12, ">"), ("+p99/hop", 12, ">"),
         ("+p99.9/hop", 12, ">"), ("CPU/1k @1k", 12, ">"), ("@50% max", 12, ">"), ("@80% max", 12, ">"),
         ("PSS MiB/px", 11, ">"), ("loadgen@max", 12, ">")]
    )  # fmt: skip
    p("(added latency per hop = (mode - direct) / 2 at 1,000 rps, paired by repetition (direct-rules: per side);")
    p(" CPU per 1,000 rps per proxy;")
    p(" PSS = the larger proxy's, the most at the end of any run)")
    s.header()
    for mode in MODES:
        agg = po.get(mode)
        if not _ok(agg):
            continue
        hop = agg.get("added_per_hop", {})
        s.row(
            [mode, (fig(agg, "max", "rps"), "{:.0f}"), fig(agg, "max", "limit") or "-",
             (hop.get("p50"), "{:.3f}"), (hop.get("p99"), "{:.3f}"), (hop.get("p999"), "{:.3f}"),
             (fig(agg, "r1000", "cpu_per_1k_rps_per_proxy"), "{:.3f}"), (fig(agg, "r50", "cpu_per_1k_rps_per_proxy"), "{:.3f}"),
             (fig(agg, "r80", "cpu_per_1k_rps_per_proxy"), "{:.3f}"), (agg.get("pss_under_load_mib"), "{:.1f}"),
             (_pct(fig(agg, "max", "loadgen_cpu_cores")), "{:.0f}%")]
        )  # fmt: skip
    _print_connections(po, meta)
    _print_mtls(po)
    _print_carried(po)
    _print_baseline(po)
    _print_tracing(po)


def _print_connections(po, meta):
    rows = [m for m in MODES if _ok(po.get(m)) and any(r.startswith("conn-") for r in po[m]["runs"])]
    if not rows:
        return
    p = print
    p("")
    p(meta.get("desc_conn", "connection cost: a new connection per request"))
    t = Table(
        [("mode", 14, "<"), ("port", 42, "<"), ("conn/s", 12, ">"), ("p50", 12, ">"), ("p99", 12, ">"),
         ("errors", 7, ">"), ("CPU ms/conn (both proxies)", 27, ">")]
    )  # fmt: skip
    t.header()
    labels = {
        "conn-http": "HTTP :8080 (client proxy pools upstream)",
        "conn-tcp": "opaque TCP :11211 (new hop conn each)",
    }
    for mode in rows:
        for run, label in labels.items():
            r = po[mode]["runs"].get(run)
            if r is None:
                continue
            if "error" in r:
                p(f"{mode:<14} {label:<42} {r['error']}")
                continue
            t.row(
                [mode, label, (r.get("rps"), "{:.0f}"), (r.get("p50_ms"), "{:.3f}"), (r.get("p99_ms"), "{:.3f}"),
                 (r.get("errors"), "{:.0f}"), (r.get("cpu_per_1k_rps"), "{:.3f}")]
            )  # fmt: skip


def _print_mtls(po):
    m = po.get("mtls_vs_plaintext")
    if not m:
        return
    p = print
    a = m["added_at_1000_ms"]
    cpu = m["cpu_per_1k_rps_per_proxy"]
    mx = m["max_rps"]
    p("")
    p("mTLS vs plaintext (skein-mtls - skein, medians of this run):")
    p(
        f"  keep-alive, 1,000 rps: added p50 {_fmt(a['p50'], '{:+.3f}')} ms, p99 {_fmt(a['p99'], '{:+.3f}')} ms,"
        f" p99.9 {_fmt(a['p999'], '{:+.3f}')} ms (two proxies, one mTLS hop);"
        f" CPU/1k/proxy {_fmt(cpu['plaintext'])} -> {_fmt(cpu['mtls'])} (x{_fmt(cpu['ratio'], '{:.2f}')});"
        f" max rps {_fmt(mx['plaintext'], '{:.0f}')} -> {_fmt(mx['mtls'], '{:.0f}')} (x{_fmt(mx['ratio'], '{:.2f}')})"
    )
    tcp = m.get("new_connection_tcp")
    if tcp:
        p(
            f"  handshake (a new proxy-to-proxy connection per request, opaque TCP): added p50"
            f" {_fmt(tcp['p50_ms_added'], '{:+.3f}')} ms, p99 {_fmt(tcp['p99_ms_added'], '{:+.3f}')} ms per connection;"
            f" CPU {_fmt(tcp['cpu_ms_per_connection_added'], '{:+.3f}')} ms per handshake (both ends)"
        )
    http = m.get("new_connection_http")
    if http:
        p(
            f"  a new client connection per request to the HTTP port: added p50 {_fmt(http['p50_ms_added'], '{:+.3f}')} ms,"
            f" p99 {_fmt(http['p99_ms_added'], '{:+.3f}')} ms (the client proxy's upstream pool: no handshake per request expected)"
        )
    p("  With keep-alive (the rate and max runs) handshakes stay off the request path: the client proxy pools its")
    p("  mTLS connections to the server proxy (and resumes TLS sessions with tickets when it opens new ones).")
    p("  Both skein modes run the same --config; skein-mtls adds only the endpoints' identity (and the certificates).")


def _print_comparison(title, c):
    print(title)
    for key, name, spec in (
        ("max_rps", "max rps", "{:.0f}"),
        ("cpu_per_1k_rps_per_proxy_r1000", "CPU/1k/proxy at 1,000 rps", "{:.3f}"),
        ("cpu_per_1k_rps_per_proxy_r50", "CPU/1k/proxy at 50% of max", "{:.3f}"),
        ("cpu_per_1k_rps_per_proxy_r80", "CPU/1k/proxy at 80% of max", "{:.3f}"),
        ("pss_under_load_mib", "PSS per proxy under load (MiB)", "{:.1f}"),
    ):
        f = c[key]
        print(f"  {name}: {_fmt(f['old'], spec)} -> {_fmt(f['new'], spec)} (x{_fmt(f['ratio'], '{:.2f}')})")
    added = c["added_at_1000_ms"]
    print(f"  latency at 1,000 rps, two proxies: p50 {_fmt(added['p50'], '{:+.3f}')} ms, p99 {_fmt(added['p99'], '{:+.3f}')} ms")


def _print_carried(po):
    c = po.get("carried_vs_http1")
    if c:
        print("")
        _print_comparison("HTTP/1 carried over HTTP/2 between the proxies vs kept (skein-mtls-h1 -> skein-mtls, medians of this run):", c)


def _print_baseline(po):
    for mode, c in (po.get("vs_baseline_build") or {}).items():
        print("")
        _print_comparison(f"This build vs the baseline build ({BASELINE_OF[mode]} -> {mode}, medians of this run):", c)


def _print_tracing(po):
    t = po.get("tracing_vs_plain")
    if not t:
        return
    p = print
    base = t["skein"]
    p("")
    p(
        "Tracing vs none (skein-traceN - skein, medians of this run; per proxy, at 1,000 rps; skein: CPU/1k"
        f" {_fmt(base['cpu_per_1k_rps_per_proxy'])}, PSS {_fmt(base['pss_mib_per_proxy'], '{:.1f}')} MiB):"
    )
    for mode in TRACING:
        m = t.get(mode)
        if not m:
            continue
        p(
            f"  {mode:<15} CPU/1k {_fmt(m['cpu_per_1k_rps_per_proxy'])} (x{_fmt(m['cpu_ratio'], '{:.2f}')}),"
            f" PSS {_fmt(m['pss_mib_per_proxy'], '{:.1f}')} MiB ({_fmt(m['pss_added_mib'], '{:+.1f}')}),"
            f" p99 {_fmt(m['added_p99_at_1000_ms'], '{:+.3f}')} ms, max rps x{_fmt(m['max_rps_ratio'], '{:.2f}')}"
        )


def redis_ratios(po, mode):
    """{get_vs_direct, get_vs_haproxy, set_vs_direct, set_vs_haproxy} of one mode's medians."""
    out = {}
    for test in ("get", "set"):
        value = med(fig(po.get(mode), "redis", f"{test}_rps"))
        for other in ("direct", "haproxy"):
            out[f"{test}_vs_{other}"] = _ratio(value, med(fig(po.get(other), "redis", f"{test}_rps")))
    return out


def _print_redis(po, meta):
    p = print
    t = Table(
        [("mode", 14, "<"), ("GET rps", 13, ">"), ("SET rps", 13, ">"), ("GET p50", 12, ">"), ("GET p99", 12, ">"),
         ("SET p50", 12, ">"), ("SET p99", 12, ">"), ("GET/direct", 10, ">"), ("GET/HAProxy", 11, ">"),
         ("SET/direct", 10, ">"), ("SET/HAProxy", 11, ">"), ("CPU/1k/proxy", 12, ">"), ("PSS MiB/px", 11, ">"),
         ("loadgen%", 9, ">"), ("app%", 9, ">"), ("CPU L/S%", 9, ">"), ("limit", 12, "<")]
    )  # fmt: skip
    t.header()
    for mode, agg in _measured_modes(po):
        r = agg["runs"].get("redis")
        if r is None or "error" in r:
            p(f"{mode:<14} {(r or {}).get('error', 'no redis-benchmark output')}")
            continue
        q = redis_ratios(po, mode)
        lb, sb = med(r.get("loadgen_busy")), med(r.get("server_busy"))
        t.row(
            [mode, (r.get("get_rps"), "{:.0f}"), (r.get("set_rps"), "{:.0f}"), (r.get("get_p50_ms"), "{:.3f}"),
             (r.get("get_p99_ms"), "{:.3f}"), (r.get("set_p50_ms"), "{:.3f}"), (r.get("set_p99_ms"), "{:.3f}"),
             _fmt(q["get_vs_direct"], "{:.2f}"), _fmt(q["get_vs_haproxy"], "{:.2f}"), _fmt(q["set_vs_direct"], "{:.2f}"),
             _fmt(q["set_vs_haproxy"], "{:.2f}"), (r.get("cpu_per_1k_rps_per_proxy"), "{:.3f}"),
             (r.get("pss_mib_per_proxy"), "{:.1f}"), (_pct(r.get("loadgen_cpu_cores")), "{:.0f}"),
             (_pct(r.get("app_cpu_cores")), "{:.0f}"), f"{_fmt(lb and lb * 100, '{:.0f}')}/{_fmt(sb and sb * 100, '{:.0f}')}",
             r.get("limit") or ""]
        )  # fmt: skip
        if agg.get("path"):
            handled = f"; {agg['handled_as']}" if agg.get("handled_as") else ""
            p(f"{'':<14} path: {agg['path']}{handled}")
    p("  latencies in ms (redis-benchmark's own percentiles); ratios of medians; CPU per 1,000 requests (GET and SET) per proxy;")
    p("  limit: as in the HTTP tables (redis-benchmark runs closed loop, so each test is a maximum)")


def _print_goals(proto, po):
    rows = po.get("goals") or []
    if not rows:
        return
    p = print
    p("")
    p("Goals of issue 16 (medians; 'overlap': the repetitions' ranges overlap, so the verdict is not conclusive):")
    for g in rows:
        verdict_text = {True: "met", False: "NOT met", None: "-"}[g["met"]]
        if g["met"] is not None and g["conclusive"] is False:
            verdict_text += " (overlap)"
        note = f"  [{g['note']}]" if g.get("note") else ""
        spec = g.get("spec", "{:.3f}")
        p(f"  {g['mode']:<11} {g['goal']:<52} {_fmt(g['value'], spec):>9} vs {_fmt(g['bound'], spec):>9}  {verdict_text}{note}")


FOOTNOTES = {
    "h2": "nginx's h2 mode: h2c from the load generator, but both nginx hops speak HTTP/1.1 upstream (nginx's proxy_pass has"
    " no HTTP/2 upstream): not the same protocol between the hops as Skein and HAProxy (h2c end to end).",
}


def print_report(results):
    meta, out, per_rep = collect(results)
    p = print
    p("")
    p("=" * 140)
    p("Skein data-plane benchmark" + ("  [--quick: short runs, indicative only]" if meta.get("quick") == "1" else ""))
    p(
        f"Goals (issue 16, per hop, one worker): added p50 and p99 at 1k rps <= {GOAL_LATENCY_VS_NGINX:g}x nginx's and"
        f" <= HAProxy's; CPU per 1k rps <= {GOAL_CPU_PER_1K['h1']:g} core (h1), <= {GOAL_CPU_PER_1K['h2']:g} (h2, gRPC);"
        f" max rps through two hops >= {GOAL_MAX_VS_HAPROXY:g}x HAProxy's; PSS <= {GOAL_PSS_MIB:g} MiB per proxy under load;"
        " opaque TCP (Redis) >= HAProxy in TCP mode"
    )
    for key in ("placement", "fairness", "direct_rules", "skein_config", "skein", "versions", "durations", "reps", "machine", "machine_end"):
        if meta.get(key):
            p(f"{key}: {meta[key]}")
    p("Latencies in ms; each figure is the median over the repetitions, with min..max on the line below when they differ.")
    p("Proxy CPU and memory are per proxy instance (two per path: client side and server side); CPU is the (utime+stime)")
    p("delta over the run / wall time / (achieved rps / 1000); PSS from /proc/PID/smaps_rollup, summed over a proxy's processes.")
    for proto in PROTOCOLS:
        if proto not in out:
            continue
        po = out[proto]
        p("")
        p("-" * 140)
        p(meta.get("desc_" + proto, proto))
        if proto == "redis":
            _print_redis(po, meta)
        else:
            _print_http(proto, po, meta)
        _print_goals(proto, po)
        if proto in FOOTNOTES and "nginx" in po:
            p("  " + FOOTNOTES[proto])
        p("  (- = not measured or a mode unavailable; with short runs or a busy machine, treat differences of a few tens of microseconds as noise)")
    meta_out = {k: v for k, v in meta.items() if not k.startswith("desc_")}
    try:
        with open(os.path.join(results, "full.json"), "w") as f:
            json.dump(_round({"meta": meta_out, "aggregated": out, "repetitions": per_rep}), f, indent=1)
    except OSError:
        pass
    summary = {proto: _compact(proto, po) for proto, po in out.items()}
    summary["meta"] = dict(
        meta_out,
        goals="issue 16: added p50/p99 per hop at 1k rps <= 0.6x nginx's and <= HAProxy's; CPU per 1k rps per proxy"
        " <= 0.05 core (h1), 0.07 (h2, grpc); max rps >= 1.1x HAProxy's; PSS <= 10 MiB per proxy under load;"
        " Redis GET/SET rps >= HAProxy tcp mode",
        figures="{median, min, max, n} over the repetitions that succeeded",
    )
    p("")
    print(json.dumps(_round(summary), separators=(",", ":")))


COMPACT_FIELDS = ("rps", "p50_ms", "p99_ms", "p999_ms", "errors", "cpu_per_1k_rps_per_proxy", "pss_mib_per_proxy",
                  "loadgen_cpu_cores", "app_cpu_cores", "proxy_cpu_cores", "get_rps", "set_rps", "get_p50_ms",
                  "get_p99_ms", "set_p50_ms", "set_p99_ms", "target_rps")  # fmt: skip


def _compact(proto, po):
    """The last line's view of one protocol: each mode's runs (spreads), added latency per hop,
    PSS, limits, and the goals' verdicts."""
    out = {}
    for mode in MODES:
        agg = po.get(mode)
        if agg is None:
            continue
        c = {"status": agg["status"][:200], "reps": agg["reps"], "ok_reps": agg["ok_reps"]}
        if agg.get("handled_as"):
            c["handled_as"] = agg["handled_as"]
        if agg.get("runs"):
            c["runs"] = {
                run: {k: v for k, v in r.items() if k in COMPACT_FIELDS or k == "limit" or k == "error"}
                for run, r in agg["runs"].items()
            }
        for key in ("added_per_hop", "pss_under_load_mib"):
            if agg.get(key):
                c[key] = agg[key]
        if proto == "redis":
            c["ratios"] = redis_ratios(po, mode)
        out[mode] = c
    for key in ("mtls_vs_plaintext", "carried_vs_http1", "vs_baseline_build", "tracing_vs_plain"):
        if po.get(key):
            out[key] = po[key]
    out["goals"] = [
        {k: g[k] for k in ("mode", "goal", "value", "bound", "met", "conclusive")} for g in po.get("goals", [])
    ]
    return out


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd = argv[1]
    if cmd == "sample":
        sample(argv[2:])
    elif cmd == "rps":
        print(f"{summarize(argv[2], argv[3])['rps']:.1f}")
    elif cmd == "check":
        try:
            s = summarize(argv[2], argv[3])
        except (OSError, ValueError, KeyError) as err:
            print(f"unreadable load-generator output {argv[3]}: {err}", file=sys.stderr)
            return 1
        if argv[2] == "redis":
            if s["ok"] < 2:
                print("redis-benchmark reported no GET and SET figures", file=sys.stderr)
                return 1
            print(f"GET {s['get_rps']:.0f} rps, SET {s['set_rps']:.0f} rps, GET p99 {_fmt(s.get('get_p99_ms'))} ms")
            return 0
        if s["ok"] == 0:
            print(f"no successful request ({s['errors']} errors)", file=sys.stderr)
            return 1
        print(f"{s['ok']} ok, {s['errors']} errors, {s['rps']:.0f} rps, p99 {_fmt(s['p99_ms'])} ms")
    elif cmd == "report":
        print_report(argv[2])
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
