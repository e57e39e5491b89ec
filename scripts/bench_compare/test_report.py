"""The report rendered from a small fixture of results (testdata/results.json:
three repetitions of a few scenarios, the store, the hub and the scale-out
runs), and the parsers that build its inputs.

Run: PYTHONPATH=scripts python3 -m unittest bench_compare.test_report
"""

import copy
import json
import os
import unittest

from . import metrics
from .report import render

FIXTURE = os.path.join(os.path.dirname(__file__), "testdata", "results.json")


def load():
    with open(FIXTURE) as f:
        return json.load(f)


def row(markdown, start):
    """The table row that starts with `| START`, as its cells."""
    for line in markdown.splitlines():
        if line.startswith("| " + start):
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no row starting with {start!r}")


class RenderTest(unittest.TestCase):
    def setUp(self):
        self.results = load()
        self.md = render(self.results)

    def test_the_header_names_the_command_and_the_machine(self):
        self.assertTrue(self.md.startswith("# Performance: paypush and nginx + nchan, side by side\n"))
        self.assertIn("\n    scripts/bench-compare --reps 3\n", self.md)
        self.assertIn("Machine: 2 cores, Test CPU @ 1.00GHz, 8 GiB; the load generator "
                      "(`tools/loadgen/`) runs on the same machine. paypush abc1234 ", self.md)
        self.assertIn("nginx 1.22.1 with nchan 1.3.6, 1 worker", self.md)
        self.assertIn("Medians of 3 repetition(s)", self.md)

    def test_the_main_table_has_a_column_per_server_and_medians_per_row(self):
        self.assertIn("| figure | paypush | nchan | paypush-redis | paypush-process | paypush-memory |\n"
                      "|---|---:|---:|---:|---:|---:|\n", self.md)
        self.assertEqual(row(self.md, "memory per waiting stream, server Pss (2,000 streams)"),
                         ["memory per waiting stream, server Pss (2,000 streams)",
                          "2.50 KiB", "5.00 KiB", "n/a KiB", "n/a KiB", "n/a KiB"])
        self.assertEqual(row(self.md, "streams held by one process")[1:3], ["3,000", "2,990"])
        self.assertEqual(row(self.md, "callback -> event p50 / p99 at 2,000/s")[1:3],
                         ["0.50 / 1.50", "0.70 / 2.00"])
        self.assertEqual(row(self.md, "outcomes lost / duplicated")[1:3], ["1 / 0", "0 / 3"])
        self.assertEqual(row(self.md, "callbacks answered non-2xx or failed")[1], "2")

    def test_a_peer_gets_a_column_and_its_line_in_the_header(self):
        self.results["settings"]["peers"] = ["pushpin"]
        self.results["machine"]["pushpin_version"] = "1.36.0"
        md = render(self.results)
        self.assertIn("| paypush-memory | pushpin |\n", md)
        self.assertIn("*pushpin*: Pushpin 1.36.0 (", md)
        self.assertEqual(row(md, "memory per waiting stream, server Pss (2,000 streams)")[-1], "n/a KiB")
        self.assertNotIn("*pushpin*", self.md)

    def test_differences_and_ratios_pair_the_right_figures(self):
        # WebSocket against SSE: medians 1.50 - 2.00 KiB, 1.70 - 1.50 ms.
        ws = self.md.split("| WebSocket: memory", 1)[1]
        self.assertEqual(row(ws, "... Pss against a waiting SSE stream")[1], "-0.50 KiB")
        self.assertEqual(row(ws, "... p99 against SSE's at 2,000/s")[1], "+0.20 ms")
        # Flat cost: median over repetitions of the per-repetition ratio.
        self.assertEqual(row(self.md, "flat cost: 3,000 against 500")[1], "1.10 / 1.05")
        self.assertEqual(row(self.md, "memory per waiting stream over h2c")[1:],
                         ["1.25 KiB", "2.50 KiB", "0.50"])

    def test_each_repetition_shows_its_p99_with_its_syncs(self):
        self.assertIn("paypush's p99 at 2,000/s in each repetition, in ms, with that run's "
                      "fdatasync calls (mean time, and how many of them took over 1 ms): "
                      "1.50 (0.250 ms, 0 of 901); 1.80 (n/a ms, 1 of 902); "
                      "1.35 (0.750 ms, 2 of 903).", self.md)
        self.assertNotIn("at 1,000/s in each repetition", self.md)

    def test_the_targets_show_each_repetition_against_its_bound(self):
        targets = self.md.split("## Targets, in each repetition", 1)[1].split("## Every figure")[0]
        sections = targets.split("\n\n**")[1:]
        self.assertEqual(len(sections), 4)
        self.assertTrue(sections[0].startswith("`--in-memory` against nchan"))
        # In-memory against nchan: rep 2's p50 and rep 3's CPU miss.
        self.assertEqual(row(sections[0], "1 |"), ["1", "0.40 / 0.70", "1.20 / 2.00", "30.0 / 35.0", "yes"])
        self.assertEqual(row(sections[0], "2 |")[-1], "**no**")
        self.assertEqual(row(sections[0], "3 |")[3:], ["40.0 / 35.0", "**no**"])
        self.assertIn("met in 1 of 3 repetitions.", sections[0])
        # Durable: the bound is that repetition's in-memory p99 plus its sync p99.
        self.assertEqual(row(sections[1], "1 |"),
                         ["1", "1.50", "1.20 + 0.40 = 1.60", "0 of 901", "yes",
                          "40.0", "30.0 + 20 / 2.00 = 40.0", "yes"])
        self.assertEqual(row(sections[1], "2 |")[2:5], ["n/a", "1 of 902", "n/a"])
        self.assertEqual(row(sections[1], "3 |")[2:5], ["1.00 + 0.20 = 1.20", "2 of 903", "**no**"])
        self.assertIn("p99: met in 1 of 2 repetitions. CPU: met in 2 of 2 repetitions.", sections[1])
        # Callbacks/s: 20 000 / 15 000 and 24 000 / 21 000; rep 3 has no nchan run.
        self.assertEqual(row(sections[2], "1 |"), ["1", "20,000", "15,000", "1.33", "yes"])
        self.assertEqual(row(sections[2], "2 |")[3:], ["1.14", "**no**"])
        self.assertEqual(row(sections[2], "3 |")[2:], ["n/a", "n/a", "n/a"])
        self.assertIn("met in 1 of 2 repetitions.", sections[2])
        # The design's floor beside --in-memory and nchan: rep 2's p50 is over
        # nchan's, rep 3 has no floor run; its lost outcomes are counted.
        self.assertTrue(sections[3].startswith("The design's floor"))
        self.assertEqual(row(sections[3], "1 |"),
                         ["1", "0.60 / 0.40 / 0.70", "1.80 / 1.20 / 2.00", "25.0 / 30.0 / 35.0",
                          "18,000 / n/a / 15,000", "0"])
        self.assertEqual(row(sections[3], "2 |")[1], "0.90 / 0.90 / 0.84")
        self.assertEqual(row(sections[3], "2 |")[5], "1")
        self.assertEqual(row(sections[3], "3 |")[1:4], ["n/a / 0.50 / 0.63", "n/a / 1.00 / 1.80",
                                                        "n/a / 40.0 / 35.0"])
        self.assertIn("The floor's p50 at or under nchan's: met in 1 of 2 repetitions.", sections[3])

    def test_no_floor_runs_no_floor_section(self):
        self.results["runs"] = [r for r in self.results["runs"] if not r["label"].startswith("floor/")]
        self.assertNotIn("The design's floor", render(self.results))

    def test_the_store_hub_and_scale_out_sections(self):
        self.assertEqual(row(self.md, "data folder size after them")[1],
                         "7.0 MiB (73.4 bytes per outcome)")
        self.assertEqual(row(self.md, "fdatasync calls, mean time")[1],
                         "2,500, 0.812 ms (40.0 callbacks per sync)")
        self.assertEqual(row(self.md, "the store thread's CPU per sync")[1], "55 µs; n/a")
        self.assertEqual(row(self.md, "register_complete")[1:], ["310.2 ns", "315.9 ns", "n/a"])
        scale = self.md.split("## Scale-out", 1)[1]
        self.assertEqual(row(scale, "Redis commands sent per checkout")[1:], ["4.00", "9.00"])
        self.assertEqual(row(scale, "pub/sub messages received per callback")[1:],
                         ["3.00", "1.00"])
        self.assertEqual(row(scale, "outcomes lost / duplicated")[1:], ["1 / 0", "1 / 0"])
        shards = scale.split("### Over 1, 2 and 3 shards", 1)[1]
        self.assertEqual(row(shards, "1")[1:], ["5,000", "100.0 µs", "30.0 µs", "10.0 µs",
                                                "1,000,000 checkouts/s"])
        self.assertEqual(row(shards, "3")[1:], ["9,002", "n/a", "40.0 µs", "10.0 µs",
                                                "750,000 checkouts/s"])

    def test_render_is_pure(self):
        before = copy.deepcopy(self.results)
        self.assertEqual(render(self.results), self.md)
        self.assertEqual(self.results, before)

    def test_no_scale_out_runs_no_section_and_no_hub_times_no_hub_section(self):
        self.results["scaleout"] = []
        self.results["hub"] = {}
        md = render(self.results)
        self.assertNotIn("## Scale-out", md)
        self.assertNotIn("## The hub", md)
        self.assertTrue(md.endswith("restored) |\n"))


class MetricsTest(unittest.TestCase):
    def test_criterion_estimates_on_one_line_or_the_next(self):
        text = ("Benchmarking duplicate/1\nduplicate/1   time:   [1.0 ns 2.5 ns 3.0 ns]\n"
                "expire/100000\n              time:   [4.0 µs 4.2 µs 4.4 µs]\n")
        self.assertEqual(metrics.criterion_times(text),
                         {"duplicate/1": "2.5 ns", "expire/100000": "4.2 µs"})

    def test_sync_figures_from_paypush_metrics(self):
        text = ('paypush_store_sync_seconds_bucket{le="0.001"} 8\n'
                "paypush_store_sync_seconds_sum 0.02\npaypush_store_sync_seconds_count 10\n")
        self.assertEqual(metrics.sync_figures(text, "paypush/latency-1000/1", "600000"),
                         {"label": "paypush/latency-1000/1", "syncs": 10, "sync_ms": 2.0,
                          "p99_ms": 1.0, "over_1ms": 2, "writer_us_per_sync": 60.0})
        empty = metrics.sync_figures("", "x", "n/a")
        self.assertEqual((empty["sync_ms"], empty["p99_ms"], empty["writer_us_per_sync"]),
                         (None, None, None))

    def test_a_p99_is_read_off_the_buckets_as_histogram_quantile_does(self):
        buckets = [(0.0001, 50), (0.0002, 90), (0.001, 99.5), (float("inf"), 100)]
        # Rank 99 of 100 lies 9 / 9.5 of the way through the 0.2-1 ms bucket.
        self.assertAlmostEqual(metrics.quantile_ms(buckets, 100, 0.99), 0.2 + 0.8 * 9 / 9.5)
        self.assertAlmostEqual(metrics.quantile_ms(buckets, 100, 0.5), 0.1)
        # Past the last finite bucket: its bound, the most the histogram can say.
        self.assertAlmostEqual(metrics.quantile_ms(buckets, 100, 0.999), 1.0)
        self.assertIsNone(metrics.quantile_ms([], 0, 0.99))

    def test_commands_sent_leave_out_what_the_record_script_runs(self):
        text = ("# Commandstats\r\ncmdstat_evalsha:calls=7,usec=1\r\ncmdstat_set:calls=5,usec=1\r\n"
                "cmdstat_publish:calls=5,usec=1\r\ncmdstat_subscribe:calls=3,usec=2\r\n"
                "cmdstat_replconf:calls=50,usec=2\r\n")
        self.assertEqual(metrics.commands_sent(text), 10)

    def test_the_last_json_line_of_loadgen(self):
        self.assertEqual(metrics.last_json_line('run  x\n{"a": 1}\n{"a": 2}\ntail\n'), {"a": 2})
        self.assertIsNone(metrics.last_json_line("loadgen: refused\n"))


if __name__ == "__main__":
    unittest.main()
