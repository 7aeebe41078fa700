#!/usr/bin/env python3
"""Helpers of benches/proxy.sh (standard library only).

  report.py sample NAME=PID[,PID...] ...   CPU time and memory of process groups, as one JSON line
  report.py rps KIND FILE                  successful requests per second of a load-generator run
  report.py check KIND FILE                one line on stderr and exit 1 unless the run had answers
  report.py report RESULTS_DIR             the table, then the summary as the last line (JSON)

KIND is `oha` (its JSON output) or `ghz` (its JSON output, with per-request details).
"""

import json
import math
import os
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
TRACING = ("skein-trace0", "skein-trace1", "skein-trace100")
MODES = ("direct", "skein", "skein-mtls") + TRACING + ("nginx", "haproxy")
PROXIES = ("skein", "skein-mtls") + TRACING + ("nginx", "haproxy")
PROTOCOLS = ("h1", "h2", "grpc")
# Goals the issue sets for Skein.
GOAL_RSS_MIB = 15.0
GOAL_CPU_PER_1K = 0.1


# ---------------------------------------------------------------------------------------------
# /proc sampling


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
    """(cpu seconds, VmRSS kB, VmHWM kB) of one process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of stat (utime, stime); `fields` starts at field 3.
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    mem = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            mem[key] = int(value.split()[0])
    return cpu, mem.get("VmRSS", 0), mem.get("VmHWM", 0)


def sample(args):
    groups = {}
    for arg in args:
        name, _, pids = arg.partition("=")
        tops = [int(p) for p in pids.split(",") if p]
        cpu = rss = hwm = 0
        procs = 0
        for pid in _descendants(tops):
            got = _proc(pid)
            if got is None:
                continue
            procs += 1
            cpu += got[0]
            rss += got[1]
            hwm += got[2]
        groups[name] = {"cpu_s": cpu, "rss_kb": rss, "hwm_kb": hwm, "processes": procs}
    print(json.dumps({"t": time.monotonic(), "groups": groups}))


# ---------------------------------------------------------------------------------------------
# Load-generator output


def _percentile(sorted_values, q):
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(kind, path):
    """{"rps", "ok", "errors", "p50_ms", "p99_ms", "p999_ms"} of one run."""
    with open(path) as f:
        data = json.load(f)
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
# The report


def _read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _load_sample(path):
    text = _read(path)
    return json.loads(text) if text else None


def _usage(before, after, rps):
    """CPU and memory of the proxy groups over one run."""
    if not before or not after or not after["groups"]:
        return {}
    wall = after["t"] - before["t"]
    names = sorted(after["groups"])
    cpu = sum(after["groups"][g]["cpu_s"] - before["groups"].get(g, {}).get("cpu_s", 0) for g in names)
    cores = cpu / wall if wall > 0 else None
    per_1k = cores / (rps / 1000.0) if cores is not None and rps > 0 else None
    n = len(names)
    rss = max(after["groups"][g]["rss_kb"] for g in names) / 1024.0
    hwm = max(after["groups"][g]["hwm_kb"] for g in names) / 1024.0
    return {
        "proxies": n,
        "cpu_cores": cores,
        "cpu_per_1k_rps": per_1k,
        "cpu_per_1k_rps_per_proxy": per_1k / n if per_1k is not None else None,
        "rss_mib_per_proxy": rss,
        "hwm_mib_per_proxy": hwm,
        "rss_mib_total": sum(after["groups"][g]["rss_kb"] for g in names) / 1024.0,
    }


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
    return {"loadgen_cpu_cores": cpu / (t1 - t0)} if t1 > t0 else {}


def _skein_handling(mdir):
    """How the Skein proxies treated the traffic, from their /metrics: HTTP requests counted or not."""
    requests = tls = 0.0
    seen = False
    for side in ("client", "server"):
        text = _read(os.path.join(mdir, f"metrics-{side}.txt"))
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


def _ratio(a, b):
    """a / b, or None where that means nothing (a figure missing, or not positive: an added
    latency below zero is noise, and dividing by it would flip the comparison)."""
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return a / b


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
    return spec.format(value)


def collect(results):
    meta = {}
    for line in (_read(os.path.join(results, "meta.env"), "") or "").splitlines():
        key, _, value = line.partition("=")
        if key:
            meta[key] = value
    out = {}
    for proto in PROTOCOLS:
        pdir = os.path.join(results, proto)
        if not os.path.isdir(pdir):
            continue
        kind = "ghz" if proto == "grpc" else "oha"
        proto_out = {}
        for mode in MODES:
            mdir = os.path.join(pdir, mode)
            if not os.path.isdir(mdir):
                continue
            status = _read(os.path.join(mdir, "status"), "unavailable: did not run")
            entry = {"status": status}
            note = _read(os.path.join(mdir, "note"))
            if note:
                entry["path"] = note
            if mode.startswith("skein"):
                handling = _skein_handling(mdir)
                if handling:
                    entry["handled_as"] = handling
                    entry["path"] = f"{note}; {handling}"
            runs = {}
            for name in sorted(os.listdir(mdir)):
                if not name.endswith(".json") or not name.startswith(("max", "r", "conn-")):
                    continue
                run = name[: -len(".json")]
                try:
                    s = summarize(kind, os.path.join(mdir, name))
                except (OSError, ValueError, KeyError) as err:
                    s = {"error": f"unreadable output: {err}"}
                target = _read(os.path.join(mdir, run + ".target"))
                if target:
                    s["target_rps"] = float(target)
                s.update(_loadgen(os.path.join(mdir, run + ".loadgen")))
                s.update(
                    _usage(
                        _load_sample(os.path.join(mdir, run + ".before")),
                        _load_sample(os.path.join(mdir, run + ".after")),
                        s.get("rps", 0.0),
                    )
                )
                runs[run] = s
            if "max" in runs:
                entry["max_rps"] = runs["max"].get("rps")
                entry["max_errors"] = runs["max"].get("errors")
                entry["max_loadgen_cpu_cores"] = runs["max"].get("loadgen_cpu_cores")
            entry["rates"] = {k: v for k, v in runs.items() if k != "max" and not k.startswith("conn-")}
            conns = {k[len("conn-"):]: v for k, v in runs.items() if k.startswith("conn-")}
            if conns:
                entry["connections"] = conns
            at1k = runs.get("r1000", {})
            for key in ("p50_ms", "p99_ms", "p999_ms"):
                entry[key] = at1k.get(key)
            if mode != "direct":
                for key in ("cpu_per_1k_rps_per_proxy", "rss_mib_per_proxy", "hwm_mib_per_proxy"):
                    entry[key] = at1k.get(key)
                final = _load_sample(os.path.join(mdir, "final.sample"))
                if final and final["groups"]:
                    entry["peak_hwm_mib_per_proxy"] = max(g["hwm_kb"] for g in final["groups"].values()) / 1024.0
            proto_out[mode] = entry
        direct = proto_out.get("direct", {})
        for mode in PROXIES:
            entry = proto_out.get(mode)
            if not entry:
                continue
            added = {}
            for key in ("p50", "p99", "p999"):
                if entry.get(key + "_ms") is not None and direct.get(key + "_ms") is not None:
                    diff = entry[key + "_ms"] - direct[key + "_ms"]
                    added[key] = {"added_ms": diff, "per_hop_ms": diff / 2.0}
            entry["added_vs_direct_at_1000"] = added
            entry["added_p99_per_hop_ms"] = added.get("p99", {}).get("per_hop_ms")
        skein = proto_out.get("skein", {})
        ratios = {}
        for other in ("nginx", "haproxy"):
            o = proto_out.get(other, {})
            ratios[f"skein_vs_{other}"] = {
                "max_rps": _ratio(skein.get("max_rps"), o.get("max_rps")),
                "p99_at_1000": _ratio(skein.get("p99_ms"), o.get("p99_ms")),
                "added_p99_per_hop": _ratio(skein.get("added_p99_per_hop_ms"), o.get("added_p99_per_hop_ms")),
                "cpu_per_1k_rps": _ratio(skein.get("cpu_per_1k_rps_per_proxy"), o.get("cpu_per_1k_rps_per_proxy")),
                "rss": _ratio(skein.get("rss_mib_per_proxy"), o.get("rss_mib_per_proxy")),
            }
        ratios["skein_vs_direct"] = {
            "max_rps": _ratio(skein.get("max_rps"), direct.get("max_rps")),
            "p50_at_1000": _ratio(skein.get("p50_ms"), direct.get("p50_ms")),
            "p99_at_1000": _ratio(skein.get("p99_ms"), direct.get("p99_ms")),
            "p999_at_1000": _ratio(skein.get("p999_ms"), direct.get("p999_ms")),
        }
        proto_out["ratios"] = ratios
        proto_out["goals"] = _goals(proto_out)
        mtls = _mtls_vs_plaintext(proto_out)
        if mtls:
            proto_out["mtls_vs_plaintext"] = mtls
        tracing = _tracing_vs_plain(proto_out)
        if tracing:
            proto_out["tracing_vs_plain"] = tracing
        out[proto] = proto_out
    return meta, out


def _diff(a, b):
    return None if a is None or b is None else a - b


def _mtls_vs_plaintext(p):
    """skein-mtls against skein (plaintext) of the same run: what mutual TLS between the sidecars
    costs. Latencies in ms; `handshake` from the new-connection-per-request runs."""
    plain, mtls = p.get("skein"), p.get("skein-mtls")
    if not plain or not mtls or not plain["status"].startswith("ok") or not mtls["status"].startswith("ok"):
        return None
    out = {
        "added_at_1000_ms": {
            k: _diff(mtls.get(k + "_ms"), plain.get(k + "_ms")) for k in ("p50", "p99", "p999")
        },
        "cpu_per_1k_rps_per_proxy": {
            "plaintext": plain.get("cpu_per_1k_rps_per_proxy"),
            "mtls": mtls.get("cpu_per_1k_rps_per_proxy"),
            "ratio": _ratio(mtls.get("cpu_per_1k_rps_per_proxy"), plain.get("cpu_per_1k_rps_per_proxy")),
        },
        "max_rps": {
            "plaintext": plain.get("max_rps"),
            "mtls": mtls.get("max_rps"),
            "ratio": _ratio(mtls.get("max_rps"), plain.get("max_rps")),
        },
        "rss_mib_per_proxy": {"plaintext": plain.get("rss_mib_per_proxy"), "mtls": mtls.get("rss_mib_per_proxy")},
    }
    for kind in ("tcp", "http"):
        a = (plain.get("connections") or {}).get(kind)
        b = (mtls.get("connections") or {}).get(kind)
        if not a or not b or "error" in a or "error" in b:
            continue
        out[f"new_connection_{kind}"] = {
            "p50_ms": {"plaintext": a.get("p50_ms"), "mtls": b.get("p50_ms"), "added": _diff(b.get("p50_ms"), a.get("p50_ms"))},
            "p99_ms": {"plaintext": a.get("p99_ms"), "mtls": b.get("p99_ms"), "added": _diff(b.get("p99_ms"), a.get("p99_ms"))},
            "connections_per_s": {"plaintext": a.get("rps"), "mtls": b.get("rps")},
            # CPU ms per connection, both proxies together (CPU per 1,000 rps = CPU ms per request).
            "cpu_ms_per_connection": {
                "plaintext": a.get("cpu_per_1k_rps"),
                "mtls": b.get("cpu_per_1k_rps"),
                "added": _diff(b.get("cpu_per_1k_rps"), a.get("cpu_per_1k_rps")),
            },
        }
    return out


def _tracing_vs_plain(p):
    """The tracing modes against skein (no exporter) of the same run: CPU per 1,000 rps and
    memory per proxy at 1,000 rps, and the max, at each sampling percentage."""
    plain = p.get("skein")
    if not plain or not plain["status"].startswith("ok"):
        return None
    out = {}
    for mode in TRACING:
        entry = p.get(mode)
        if not entry or not entry["status"].startswith("ok"):
            continue
        out[mode] = {
            "cpu_per_1k_rps_per_proxy": entry.get("cpu_per_1k_rps_per_proxy"),
            "cpu_ratio": _ratio(entry.get("cpu_per_1k_rps_per_proxy"), plain.get("cpu_per_1k_rps_per_proxy")),
            "rss_mib_per_proxy": entry.get("rss_mib_per_proxy"),
            "rss_added_mib": _diff(entry.get("rss_mib_per_proxy"), plain.get("rss_mib_per_proxy")),
            "max_rps_ratio": _ratio(entry.get("max_rps"), plain.get("max_rps")),
            "added_p99_at_1000_ms": _diff(entry.get("p99_ms"), plain.get("p99_ms")),
        }
    if not out:
        return None
    out["skein"] = {
        "cpu_per_1k_rps_per_proxy": plain.get("cpu_per_1k_rps_per_proxy"),
        "rss_mib_per_proxy": plain.get("rss_mib_per_proxy"),
    }
    return out


def _print_tracing(po):
    t = po.get("tracing_vs_plain")
    if not t:
        return
    p = print
    base = t["skein"]
    p("")
    p(
        "Tracing vs none (skein-traceN - skein, this run; per proxy, at 1,000 rps; skein: CPU/1k"
        f" {_fmt(base['cpu_per_1k_rps_per_proxy'])}, RSS {_fmt(base['rss_mib_per_proxy'], '{:.1f}')} MiB):"
    )
    for mode in TRACING:
        m = t.get(mode)
        if not m:
            continue
        p(
            f"  {mode:<15} CPU/1k {_fmt(m['cpu_per_1k_rps_per_proxy'])} (x{_fmt(m['cpu_ratio'], '{:.2f}')}),"
            f" RSS {_fmt(m['rss_mib_per_proxy'], '{:.1f}')} MiB ({_fmt(m['rss_added_mib'], '{:+.1f}')}),"
            f" p99 {_fmt(m['added_p99_at_1000_ms'], '{:+.3f}')} ms, max rps x{_fmt(m['max_rps_ratio'], '{:.2f}')}"
        )


def _goals(p):
    skein = p.get("skein", {})

    def le(a, b):
        return None if a is None or b is None else a <= b

    def ge(a, b):
        return None if a is None or b is None else a >= b

    hop = skein.get("added_p99_per_hop_ms")
    return {
        "added_p99_per_hop_le_nginx": le(hop, p.get("nginx", {}).get("added_p99_per_hop_ms")),
        "added_p99_per_hop_le_haproxy": le(hop, p.get("haproxy", {}).get("added_p99_per_hop_ms")),
        "max_rps_ge_nginx": ge(skein.get("max_rps"), p.get("nginx", {}).get("max_rps")),
        "max_rps_ge_haproxy": ge(skein.get("max_rps"), p.get("haproxy", {}).get("max_rps")),
        "rss_le_15mib_at_1000": le(skein.get("rss_mib_per_proxy"), GOAL_RSS_MIB),
        "cpu_le_0.1_core_per_1000": le(skein.get("cpu_per_1k_rps_per_proxy"), GOAL_CPU_PER_1K),
    }


RUN_KEYS = ("target_rps", "rps", "p50_ms", "p99_ms", "p999_ms", "errors", "cpu_per_1k_rps_per_proxy", "rss_mib_per_proxy", "loadgen_cpu_cores")
MODE_KEYS = (
    "status", "handled_as", "max_rps", "max_loadgen_cpu_cores", "p50_ms", "p99_ms", "p999_ms", "added_per_hop_ms",
    "cpu_per_1k_rps_per_proxy", "rss_mib_per_proxy", "hwm_mib_per_proxy", "peak_hwm_mib_per_proxy",
)


def _compact(po):
    """The last line's view of one protocol: headline figures, each run's figures, ratios, goals."""
    out = {}
    for mode in MODES:
        entry = po.get(mode)
        if entry is None:
            continue
        e = dict(entry)
        e["status"] = e["status"][:200]
        e["max_loadgen_cpu_cores"] = e.get("max_loadgen_cpu_cores")
        added = e.get("added_vs_direct_at_1000")
        if added is not None:
            e["added_per_hop_ms"] = {k: v["per_hop_ms"] for k, v in added.items()}
        c = {k: e[k] for k in MODE_KEYS if e.get(k) is not None}
        if e.get("rates"):
            c["runs"] = {run: {k: r[k] for k in RUN_KEYS if r.get(k) is not None} for run, r in e["rates"].items()}
        if e.get("connections"):
            c["new_connection_runs"] = {
                kind: {k: r[k] for k in RUN_KEYS + ("cpu_per_1k_rps",) if r.get(k) is not None}
                for kind, r in e["connections"].items()
            }
        out[mode] = c
    if po.get("mtls_vs_plaintext"):
        out["mtls_vs_plaintext"] = po["mtls_vs_plaintext"]
    if po.get("tracing_vs_plain"):
        out["tracing_vs_plain"] = po["tracing_vs_plain"]
    out["ratios"] = po["ratios"]
    out["goals"] = po["goals"]
    return out


RUN_LABELS = {"max": "max (closed loop)", "r1000": "1000 rps", "r50": "50% of max", "r80": "80% of max"}
RUN_ORDER = ("max", "r1000", "r50", "r80")


def _print_connections(po, meta):
    rows = [(m, po[m]["connections"]) for m in MODES if po.get(m, {}).get("connections") and po[m]["status"].startswith("ok")]
    if not rows:
        return
    p = print
    p("")
    p(meta.get("desc_conn", "connection cost: a new connection per request"))
    p(f"{'mode':<14} {'port':<42} {'conn/s':>8} {'p50':>8} {'p99':>8} {'errors':>7} {'CPU ms/conn (both proxies)':>27}")
    labels = {
        "http": "HTTP :8080 (client proxy pools upstream)",
        "tcp": "opaque TCP :11211 (new hop conn each)",
    }
    for mode, conns in rows:
        for kind in ("http", "tcp"):
            r = conns.get(kind)
            if r is None:
                continue
            if "error" in r:
                p(f"{mode:<14} {labels[kind]:<42} {r['error']}")
                continue
            p(
                f"{mode:<14} {labels[kind]:<42} {_fmt(r.get('rps'), '{:.0f}'):>8} {_fmt(r.get('p50_ms')):>8}"
                f" {_fmt(r.get('p99_ms')):>8} {_fmt(r.get('errors'), '{:d}'):>7} {_fmt(r.get('cpu_per_1k_rps'), '{:.3f}'):>27}"
            )


def _print_mtls(po):
    m = po.get("mtls_vs_plaintext")
    if not m:
        return
    p = print
    a = m["added_at_1000_ms"]
    cpu = m["cpu_per_1k_rps_per_proxy"]
    mx = m["max_rps"]
    p("")
    p("mTLS vs plaintext (skein-mtls - skein, this run):")
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
            f" {_fmt(tcp['p50_ms']['added'], '{:+.3f}')} ms, p99 {_fmt(tcp['p99_ms']['added'], '{:+.3f}')} ms per connection;"
            f" CPU {_fmt(tcp['cpu_ms_per_connection']['added'], '{:+.3f}')} ms per handshake (both ends)"
        )
    http = m.get("new_connection_http")
    if http:
        p(
            f"  a new client connection per request to the HTTP port: added p50 {_fmt(http['p50_ms']['added'], '{:+.3f}')} ms,"
            f" p99 {_fmt(http['p99_ms']['added'], '{:+.3f}')} ms (the client proxy's upstream pool: no handshake per request expected)"
        )
    p(
        "  With keep-alive (the rate and max runs) handshakes stay off the request path: the client proxy pools its"
    )
    p("  mTLS connections to the server proxy (and resumes TLS sessions with tickets when it opens new ones).")
    p("  Both skein modes run the same client --config; skein-mtls adds only the endpoint's identity (and the certificates).")


def print_report(results):
    meta, out = collect(results)
    p = print
    p("")
    p("=" * 118)
    p("Skein data-plane benchmark" + ("  [--quick: short runs, indicative only]" if meta.get("quick") == "1" else ""))
    p(
        "Goals for Skein: added p99 per hop <= nginx's and HAProxy's; max rps >= both;"
        f" RSS <= {GOAL_RSS_MIB:g} MiB per proxy at 1,000 rps; CPU <= {GOAL_CPU_PER_1K:g} core per 1,000 rps per proxy"
    )
    for key in ("placement", "skein", "versions", "durations", "machine", "machine_end"):
        if meta.get(key):
            p(f"{key}: {meta[key]}")
    p("Latencies in ms. Proxy CPU and memory are per proxy instance (two per mesh path: client side and server side);")
    p("CPU is (utime+stime delta over the run) / wall time / (achieved rps / 1000); RSS is VmRSS at the end of the run.")
    for proto in PROTOCOLS:
        if proto not in out:
            continue
        po = out[proto]
        p("")
        p("-" * 118)
        p(meta.get("desc_" + proto, proto))
        hdr = f"{'mode':<14} {'load':<18} {'target':>8} {'achieved':>9} {'p50':>8} {'p99':>8} {'p99.9':>8} {'errors':>7} {'CPU/1k/proxy':>13} {'RSS MiB':>8} {'HWM MiB':>8} {'loadgen':>8}"
        p(hdr)
        flags = set()
        for mode in MODES:
            entry = po.get(mode)
            if not entry:
                continue
            if not entry["status"].startswith("ok"):
                p(f"{mode:<14} {entry['status']}")
                continue
            runs = dict(entry.get("rates", {}))
            if entry.get("max_rps") is not None:
                runs["max"] = {
                    "rps": entry["max_rps"],
                    "errors": entry.get("max_errors"),
                    "loadgen_cpu_cores": entry.get("max_loadgen_cpu_cores"),
                }
                # The max run's latencies are closed-loop (queueing at saturation): not shown.
            for run in RUN_ORDER:
                r = runs.get(run)
                if r is None:
                    continue
                if "error" in r:
                    p(f"{mode:<14} {RUN_LABELS[run]:<18} {r['error']}")
                    continue
                achieved = _fmt(r.get("rps"), "{:.0f}")
                if r.get("target_rps") and r.get("rps") is not None and r["rps"] < 0.95 * r["target_rps"]:
                    achieved += "!"
                    flags.add("!")
                lg = r.get("loadgen_cpu_cores")
                lg_text = _fmt(lg * 100 if lg is not None else None, "{:.0f}%")
                if lg is not None and lg >= 0.9:
                    lg_text += "*"
                    flags.add("*")
                p(
                    f"{mode:<14} {RUN_LABELS[run]:<18} {_fmt(r.get('target_rps'), '{:.0f}'):>8} {achieved:>9}"
                    f" {_fmt(r.get('p50_ms') if run != 'max' else None):>8} {_fmt(r.get('p99_ms') if run != 'max' else None):>8}"
                    f" {_fmt(r.get('p999_ms') if run != 'max' else None):>8} {_fmt(r.get('errors'), '{:d}'):>7}"
                    f" {_fmt(r.get('cpu_per_1k_rps_per_proxy'), '{:.3f}'):>13} {_fmt(r.get('rss_mib_per_proxy'), '{:.1f}'):>8}"
                    f" {_fmt(r.get('hwm_mib_per_proxy'), '{:.1f}'):>8} {lg_text:>8}"
                )
            if entry.get("path"):
                p(f"{'':<14} path: {entry['path']}")
        if "!" in flags:
            p("  ! achieved under 95% of the target rate: the path (or the load generator) could not sustain it")
        if "*" in flags:
            p("  * the load generator used 90% or more of its CPU: that figure is (partly) the load generator's limit")
        p("")
        p(f"{'summary':<14} {'max rps':>9} {'+p50/hop':>9} {'+p99/hop':>9} {'+p99.9/hop':>11} {'CPU/1k/proxy':>13} {'RSS MiB':>8}   (added latency vs direct at 1,000 rps, halved)")
        for mode in MODES:
            entry = po.get(mode)
            if not entry or not entry["status"].startswith("ok"):
                continue
            added = entry.get("added_vs_direct_at_1000", {})
            p(
                f"{mode:<14} {_fmt(entry.get('max_rps'), '{:.0f}'):>9}"
                f" {_fmt(added.get('p50', {}).get('per_hop_ms')):>9} {_fmt(added.get('p99', {}).get('per_hop_ms')):>9}"
                f" {_fmt(added.get('p999', {}).get('per_hop_ms')):>11}"
                f" {_fmt(entry.get('cpu_per_1k_rps_per_proxy')):>13} {_fmt(entry.get('rss_mib_per_proxy'), '{:.1f}'):>8}"
            )
        _print_connections(po, meta)
        _print_mtls(po)
        _print_tracing(po)
        g = po["goals"]
        ratios = po["ratios"]
        p(
            "skein vs goals: "
            + "; ".join(
                [
                    f"+p99/hop <= nginx: {_fmt(g['added_p99_per_hop_le_nginx'])}",
                    f"<= haproxy: {_fmt(g['added_p99_per_hop_le_haproxy'])}",
                    f"max rps >= nginx: {_fmt(g['max_rps_ge_nginx'])} (x{_fmt(ratios['skein_vs_nginx']['max_rps'], '{:.2f}')})",
                    f">= haproxy: {_fmt(g['max_rps_ge_haproxy'])} (x{_fmt(ratios['skein_vs_haproxy']['max_rps'], '{:.2f}')})",
                    f"RSS <= {GOAL_RSS_MIB:g} MiB: {_fmt(g['rss_le_15mib_at_1000'])}",
                    f"CPU <= {GOAL_CPU_PER_1K:g}/1k: {_fmt(g['cpu_le_0.1_core_per_1000'])}",
                ]
            )
        )
        p("  (- = not measured or a mode unavailable; with only short runs or a busy machine, treat differences of a few tens of microseconds as noise)")
    meta_out = {k: v for k, v in meta.items() if not k.startswith("desc_")}
    try:
        with open(os.path.join(results, "full.json"), "w") as f:
            json.dump({"meta": meta_out, **out}, f, indent=1)
    except OSError:
        pass
    summary = {proto: _compact(po) for proto, po in out.items()}
    summary["meta"] = dict(
        meta_out,
        goals=f"added p99 per hop <= nginx and <= HAProxy; max rps >= both; RSS <= {GOAL_RSS_MIB:g} MiB and"
        f" CPU <= {GOAL_CPU_PER_1K:g} core per 1,000 rps, per proxy at 1,000 rps",
        ratios="skein figure / other figure (null where either is missing or not positive)",
    )
    p("")
    print(json.dumps(_round(summary), separators=(",", ":")))


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
