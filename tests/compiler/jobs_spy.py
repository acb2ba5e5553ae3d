"""`python -c "import jobs_spy; jobs_spy.main()" compile ...`: the omnic CLI, with each target's
lowering recording in $JOBS_SPY_LOG the process it ran in and when ({target, pid, start, end}
per line), and $JOBS_SPY_FAIL naming a target whose lowering raises. For the --jobs tests: a
fresh process, as the CLI runs a --jobs compile."""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    from omnic.cli.main import main as cli
    from omnic.compiler import pipeline

    real = pipeline.lower_target

    def spied(t, target, program, build_dir):
        start = time.time()
        if t == os.environ.get("JOBS_SPY_FAIL"):
            raise RuntimeError(f"planted failure in {t}")
        out = real(t, target, program, build_dir)
        with open(os.environ["JOBS_SPY_LOG"], "a") as f:
            f.write(json.dumps({"target": t, "pid": os.getpid(), "start": start,
                                "end": time.time()}) + "\n")
        return out

    pipeline.lower_target = spied
    sys.argv = ["omnic", *sys.argv[1:]]
    sys.exit(cli())
