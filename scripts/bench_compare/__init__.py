"""scripts/bench-compare: paypush measured side by side with nginx + nchan,
the table written to docs/performance.md.

- `run`: the options, the sizes and the order of the scenarios;
- `servers`: starting and stopping each server under test the same way;
- `loadgen`: one run of the load generator (tools/loadgen);
- `scaleout`: 3 instances on one Redis against 3 on a Redis Cluster;
- `store`: the store's size, sync cost and restart time;
- `metrics`: figures parsed from metrics, INFO and criterion text;
- `report`: `render(results)`, docs/performance.md as a pure function,
  tested by `test_report` on the fixture in `testdata/`.

Standard library only. Run it as `scripts/bench-compare`.
"""
