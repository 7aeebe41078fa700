"""Unit tests of report.py's pure parts: python3 -m unittest (in benches/proxy)."""

import unittest

import report
from report import (
    added_per_hop, aggregate, cpu_times, goals, group_totals, limit_of, parse_redis_csv, pss_kb,
    spread, tally, verdict,
)  # fmt: skip

SMAPS_ROLLUP = """55d0c8a4e000-7ffd1b9f5000 ---p 00000000 00:00 0                          [rollup]
Rss:                9876 kB
Pss:                4321 kB
Pss_Dirty:          2000 kB
Pss_Anon:           1500 kB
Pss_File:           2821 kB
Shared_Clean:       5000 kB
"""


def s(*values):
    return spread(values)


def agg(runs, **extra):
    """An aggregated mode (as aggregate() makes it) from {run: {field: [values]}}."""
    out = {"status": "ok", "reps": 1, "ok_reps": 1}
    labels = ("limit", "limits")  # kept as they are, not spread
    out["runs"] = {run: {k: (v if k in labels else spread(v)) for k, v in fields.items()} for run, fields in runs.items()}
    out.update(extra)
    return out


class Memory(unittest.TestCase):
    def test_pss_is_the_pss_line_not_its_parts(self):
        self.assertEqual(pss_kb(SMAPS_ROLLUP), 4321)

    def test_no_pss_line_is_zero(self):
        self.assertEqual(pss_kb("Rss: 10 kB\n"), 0)
        self.assertEqual(pss_kb(""), 0)

    def test_a_group_sums_its_processes_and_skips_the_gone(self):
        # nginx: master and worker share most pages; their PSS adds up to the real footprint.
        totals = group_totals([(1.5, 8000, 1200), None, (3.0, 9000, 4100)])
        self.assertEqual(totals, {"cpu_s": 4.5, "rss_kb": 17000, "pss_kb": 5300, "processes": 2})


class Format(unittest.TestCase):
    def test_long_latencies_lose_decimals_to_keep_the_columns(self):
        self.assertEqual(report._fmt(0.1234), "0.123")
        self.assertEqual(report._fmt(37.096), "37.1")
        self.assertEqual(report._fmt(123.413), "123")
        self.assertEqual(report._fmt(12000.4, "{:.0f}"), "12000")
        self.assertEqual(report._range(s(37.096, 123.413), "{:.3f}"), "37.1..123")
        self.assertEqual(report._range(s(1.0), "{:.3f}"), "")


class CpuTimes(unittest.TestCase):
    def test_busy_is_all_but_idle_and_iowait(self):
        stat = "cpu  10 0 10 100 5 0 0 0 0 0\ncpu0 1 2 3 40 5 6 7 8 0 0\ncpu1 0 0 0 10 0 0 0 0 0 0\nintr 1 2\n"
        self.assertEqual(cpu_times(stat), {"0": [27, 72], "1": [0, 10]})


class Spread(unittest.TestCase):
    def test_median_min_max_of_what_exists(self):
        self.assertEqual(s(3, None, 1, 2), {"median": 2, "min": 1, "max": 3, "n": 3})

    def test_even_count_takes_the_middle_mean(self):
        self.assertEqual(s(4, 1, 2, 3)["median"], 2.5)

    def test_nothing_is_none(self):
        self.assertIsNone(s(None, None))
        self.assertIsNone(spread([]))


class Limit(unittest.TestCase):
    def test_a_full_load_generator_cpu_caps_the_max(self):
        self.assertEqual(limit_of(0.97, 0.6, 0.2, 0.4), "loadgen")

    def test_on_the_shared_cpu_the_larger_user_is_named(self):
        self.assertEqual(limit_of(0.3, 0.95, 0.2, 0.7), "proxy CPU")
        self.assertEqual(limit_of(0.3, 0.95, 0.6, 0.3), "app CPU")
        self.assertEqual(limit_of(0.5, 0.93, 0.8, None), "app CPU")  # direct: no proxy

    def test_both_full_and_none_full(self):
        self.assertEqual(limit_of(0.95, 0.95, 0.2, 0.7), "loadgen+proxy CPU")
        self.assertEqual(limit_of(0.5, 0.6, 0.2, 0.3), "no CPU full")
        self.assertEqual(limit_of(None, None, None, None), "no CPU full")

    def test_a_cpu_full_of_other_work_is_not_blamed_on_the_benchmark(self):
        self.assertEqual(limit_of(1.0, 0.5, 0.2, 0.2, loadgen_cores=0.45), "other load (loadgen CPU)")
        self.assertEqual(limit_of(0.5, 1.0, 0.1, 0.3, loadgen_cores=0.5), "other load (server CPU)")
        self.assertEqual(limit_of(0.97, 0.5, 0.2, 0.2, loadgen_cores=0.93), "loadgen")

    def test_tally_counts_repetitions(self):
        self.assertEqual(tally(["proxy CPU"]), "proxy CPU")
        self.assertEqual(tally(["loadgen", "proxy CPU", "loadgen", None]), "loadgen 2/3, proxy CPU 1/3")
        self.assertIsNone(tally([None]))


class Verdict(unittest.TestCase):
    def test_at_most_and_at_least(self):
        self.assertEqual(verdict(0.04, 0.05, True), (True, True))
        self.assertEqual(verdict(0.06, 0.05, True), (False, True))
        self.assertEqual(verdict(12000, 11000, False), (True, True))

    def test_missing_figure_is_no_verdict(self):
        self.assertEqual(verdict(None, 1.0, True), (None, None))
        self.assertEqual(verdict(1.0, None, False), (None, None))

    def test_overlapping_ranges_are_not_conclusive(self):
        # Skein 21k..24k against 1.1 x HAProxy's 20k..22k (= 22k..24.2k): met on the medians only.
        met, conclusive = verdict(23000, 23100 * 1.0, False, s(21000, 23000, 24000), s(20000, 21000, 22000), 1.1)
        self.assertFalse(met)
        self.assertFalse(conclusive)
        met, conclusive = verdict(30000, 23100, False, s(29000, 30000, 31000), s(20000, 21000, 22000), 1.1)
        self.assertEqual((met, conclusive), (True, True))


class Redis(unittest.TestCase):
    def test_csv_of_redis_benchmark_7(self):
        text = (
            '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"\n'
            '"SET","30769.23","0.206","0.032","0.079","0.183","4.183","8.183"\n'
            '"GET","47619.05","0.127","0.040","0.119","0.183","0.239","3.503"\n'
        )
        self.assertEqual(
            parse_redis_csv(text),
            {"SET": {"rps": 30769.23, "p50_ms": 0.079, "p99_ms": 4.183}, "GET": {"rps": 47619.05, "p50_ms": 0.119, "p99_ms": 0.239}},
        )

    def test_not_csv_is_nothing(self):
        self.assertEqual(parse_redis_csv("Could not connect to Redis at 198.18.200.2:6379\n"), {})


class Repetitions(unittest.TestCase):
    def rep(self, status="ok", **runs):
        return {"status": status, "runs": runs}

    def test_aggregate_spreads_the_successful_repetitions(self):
        reps = {
            1: self.rep(max={"rps": 10000.0, "limit": "proxy CPU", "pss_mib_per_proxy": 9.0}, r1000={"pss_mib_per_proxy": 8.0}),
            2: self.rep("failed: the maximum run failed"),
            3: self.rep(max={"rps": 12000.0, "limit": "loadgen", "pss_mib_per_proxy": 11.0}, r1000={"pss_mib_per_proxy": 12.0}),
        }
        a = aggregate(reps)
        self.assertEqual(a["status"], "ok in 2 of 3 repetitions (other: failed: the maximum run failed)")
        self.assertEqual(a["runs"]["max"]["rps"], {"median": 11000.0, "min": 10000.0, "max": 12000.0, "n": 2})
        self.assertEqual(a["runs"]["max"]["limit"], "proxy CPU 1/2, loadgen 1/2")
        self.assertEqual(a["runs"]["max"]["limits"], ["proxy CPU", "loadgen"])
        # The larger of each repetition's runs: 9 and 12.
        self.assertEqual(a["pss_under_load_mib"], {"median": 10.5, "min": 9.0, "max": 12.0, "n": 2})

    def test_all_failed_keeps_the_reason(self):
        self.assertEqual(aggregate({1: self.rep("unavailable: no Go")})["status"], "unavailable: no Go")

    def test_added_latency_pairs_repetitions_and_halves(self):
        mode = {1: self.rep(r1000={"p50_ms": 0.5, "p99_ms": 1.0}), 2: self.rep(r1000={"p50_ms": 0.9, "p99_ms": 2.0})}
        direct = {1: self.rep(r1000={"p50_ms": 0.1, "p99_ms": 0.2}), 2: self.rep(r1000={"p50_ms": 0.3, "p99_ms": 0.2})}
        hop = added_per_hop(mode, direct)
        self.assertAlmostEqual(hop["p50"]["min"], 0.2)
        self.assertAlmostEqual(hop["p50"]["max"], 0.3)
        self.assertAlmostEqual(hop["p99"]["median"], 0.65)
        self.assertNotIn("p999", hop)


class Goals(unittest.TestCase):
    def po(self):
        return {
            "skein": agg(
                {"r1000": {"cpu_per_1k_rps_per_proxy": [0.045]}, "r80": {"cpu_per_1k_rps_per_proxy": [0.03]},
                 "max": {"rps": [23000.0]}},
                added_per_hop={"p50": s(0.05), "p99": s(0.5)}, pss_under_load_mib=s(12.0),
            ),
            "nginx": agg({"max": {"rps": [38000.0]}}, added_per_hop={"p50": s(0.086), "p99": s(0.276)}),
            "haproxy": agg(
                {"max": {"rps": [20000.0], "limits": ["loadgen+proxy CPU", "other load (loadgen CPU)"]}},
                added_per_hop={"p50": s(0.094), "p99": s(0.468)},
            ),
        }  # fmt: skip

    def test_h1_goals(self):
        rows = {g["goal"]: g for g in goals("h1", self.po())}
        self.assertTrue(rows["added p50 per hop at 1k rps <= 0.6x nginx's"]["met"])  # 0.05 <= 0.0516
        self.assertAlmostEqual(rows["added p50 per hop at 1k rps <= 0.6x nginx's"]["bound"], 0.0516)
        self.assertTrue(rows["added p50 per hop at 1k rps <= HAProxy's"]["met"])
        self.assertFalse(rows["added p99 per hop at 1k rps <= 0.6x nginx's"]["met"])
        self.assertFalse(rows["added p99 per hop at 1k rps <= HAProxy's"]["met"])
        cpu = rows["CPU per 1k rps per proxy at 1k rps <= 0.05 core"]
        self.assertTrue(cpu["met"])
        self.assertIn("at 80% of max 0.030", cpu["note"])
        mx = rows["max rps through two hops >= 1.1x HAProxy's"]
        self.assertTrue(mx["met"])  # 23000 >= 22000
        self.assertIn("in 1 of 2 repetitions: a lower bound", mx["note"])
        self.assertFalse(rows["PSS per proxy under load <= 10 MiB"]["met"])

    def test_h2_cpu_goal_is_looser(self):
        rows = {g["goal"]: g for g in goals("h2", self.po())}
        self.assertIn("CPU per 1k rps per proxy at 1k rps <= 0.07 core", rows)

    def test_missing_peer_is_no_verdict(self):
        po = self.po()
        del po["nginx"]
        rows = {g["goal"]: g for g in goals("h1", po)}
        self.assertIsNone(rows["added p50 per hop at 1k rps <= 0.6x nginx's"]["met"])

    def test_failed_skein_has_no_goal_rows(self):
        po = self.po()
        po["skein"] = {"status": "failed: skein proxy did not become ready"}
        self.assertEqual(goals("h1", po), [])

    def test_redis_goals_against_haproxy_tcp(self):
        po = {
            "skein-mtls": agg({"redis": {"get_rps": [19000.0], "set_rps": [21000.0]}}, pss_under_load_mib=s(9.0)),
            "haproxy": agg({"redis": {"get_rps": [20000.0], "set_rps": [20000.0]}}),
        }
        rows = {g["goal"]: g for g in goals("redis", po)}
        self.assertFalse(rows["opaque TCP GET rps >= HAProxy tcp mode"]["met"])
        self.assertTrue(rows["opaque TCP SET rps >= HAProxy tcp mode"]["met"])
        self.assertTrue(rows["PSS per proxy under load <= 10 MiB"]["met"])
        self.assertEqual({g["mode"] for g in goals("redis", po)}, {"skein-mtls"})

    def test_carrying_http1_over_http2_is_compared_with_keeping_it(self):
        po = {
            "skein-mtls": agg({"max": {"rps": [15000.0]}, "r1000": {"cpu_per_1k_rps_per_proxy": [0.04]}}, pss_under_load_mib=s(9.0)),
            "skein-mtls-h1": agg({"max": {"rps": [10000.0]}, "r1000": {"cpu_per_1k_rps_per_proxy": [0.05]}}, pss_under_load_mib=s(12.0)),
        }  # fmt: skip
        c = report._compare(po, "skein-mtls", "skein-mtls-h1")
        self.assertAlmostEqual(c["max_rps"]["ratio"], 1.5)
        self.assertAlmostEqual(c["cpu_per_1k_rps_per_proxy_r1000"]["ratio"], 0.8)
        self.assertAlmostEqual(c["pss_under_load_mib"]["ratio"], 0.75)
        self.assertIsNone(c["cpu_per_1k_rps_per_proxy_r50"]["ratio"], "not measured in either")
        del po["skein-mtls-h1"]
        self.assertIsNone(report._compare(po, "skein-mtls", "skein-mtls-h1"))

    def test_each_skein_mode_is_compared_with_the_baseline_builds(self):
        def run(rps, cpu, p50):
            return agg({"max": {"rps": [rps]}, "r1000": {"cpu_per_1k_rps_per_proxy": [cpu], "p50_ms": [p50], "p99_ms": [1.0]}}, pss_under_load_mib=s(10.0))

        po = {"skein": run(12000.0, 0.06, 0.30), "skein-base": run(10000.0, 0.08, 0.40), "skein-mtls": run(9000.0, 0.07, 0.35)}
        b = report._baseline_comparisons(po)
        self.assertEqual(set(b), {"skein"}, "skein-mtls has no baseline run")
        self.assertAlmostEqual(b["skein"]["max_rps"]["ratio"], 1.2)
        self.assertAlmostEqual(b["skein"]["cpu_per_1k_rps_per_proxy_r1000"]["ratio"], 0.75)
        self.assertAlmostEqual(b["skein"]["added_at_1000_ms"]["p50"], -0.10)
        self.assertIsNone(report._baseline_comparisons({"skein": po["skein"]}))

    def test_the_goal_constants_are_issue_16s(self):
        self.assertEqual(report.GOAL_CPU_PER_1K, {"h1": 0.05, "h2": 0.07, "grpc": 0.07})
        self.assertEqual((report.GOAL_LATENCY_VS_NGINX, report.GOAL_MAX_VS_HAPROXY, report.GOAL_PSS_MIB), (0.6, 1.1, 10.0))


if __name__ == "__main__":
    unittest.main()
