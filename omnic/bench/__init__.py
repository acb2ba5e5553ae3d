"""`omnic bench`: runtime speed and memory of every artifact of a build, against this machine's
memory-bandwidth limit on decoding.

- `bandwidth.py` — streaming-copy bandwidth (STREAM convention) and the last-level cache size;
- `threads.py`   — one thread count set the same way for every runtime, and recorded;
- `worker.py`    — one artifact measured in a fresh process (`python -m omnic.bench.worker`);
- `measure.py`   — `bench_build(build_dir, BenchSettings)`: the workers, ceilings and fractions;
- `report.py`    — the rich table and the JSON.
"""

from omnic.bench.measure import BenchError, BenchSettings, bench_build

__all__ = ["BenchError", "BenchSettings", "bench_build"]
