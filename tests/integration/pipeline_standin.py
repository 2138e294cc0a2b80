"""Stands in for `invoke` in the pipeline jobs whose task bakes, boots, restores or rolls out
(KILN_HEAVY_INVOKE), when tests/integration/test_pipelines_run.py runs the pipelines.

Those tasks have integration tests of their own; here only the pipeline's wiring is under test,
so this records which job asked for which task with which arguments (one JSON line per call in
$KILN_STANDIN_LOG) and fails when the call starts with one of the ';'-separated
$KILN_STANDIN_FAIL prefixes (e.g. "verify web"), as the real task would on a bad image.
"""

import json
import os
import sys

call = sys.argv[1:]
with open(os.environ["KILN_STANDIN_LOG"], "a") as log:
    log.write(json.dumps({"job": os.environ.get("CI_JOB_NAME", ""), "task": call}) + "\n")
failing = [p for p in os.environ.get("KILN_STANDIN_FAIL", "").split(";") if p]
if any(" ".join(call).startswith(prefix) for prefix in failing):
    print(f"stand-in: `invoke {' '.join(call)}` fails, as the test asked", file=sys.stderr)
    sys.exit(1)
print(f"stand-in: `invoke {' '.join(call)}` recorded")
