"""What `invoke upgrade` costs beyond the `helm upgrade` it runs.

On the demo's staging cluster (`binder-staging`, started if not up and then left as it
was found), local-staging is deployed once; then, in pairs, the step and the bare helm
command it runs are timed in turn, each as a whole process:

    A  python -m invoke upgrade --env=local-staging --release binder
    B  the `helm upgrade ...` line that `invoke upgrade ... --dry-run` prints, run as is

The step's fixed overhead is A - B, pair by pair (start-up, reading the release's status,
the CRDs, the deploy lock, the hooks' report); the median is quoted.

    python benchmarks/upgrade_overhead.py            # 7 pairs
    python benchmarks/upgrade_overhead.py --pairs 3
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

# Run as a script from the project root: `tasks` and `sandbox` are importable from there.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox import chartrepo, clusters  # noqa: E402
from tasks.adapters import go_builds  # noqa: E402

CLUSTER = "binder-staging"
STEP = ["upgrade", "--env=local-staging", "--release", "binder"]


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "CI": ""},
        check=False,
    )


def helm_line() -> tuple[dict[str, str], list[str]]:
    """The environment and the command of the helm upgrade the step runs, from its dry run."""
    dry = invoke(*STEP, "--dry-run")
    for line in dry.stdout.splitlines():
        if line.startswith("[dry-run] ") and " helm upgrade " in f" {line} ":
            # `[dry-run] NAME=value ... helm upgrade ...`: the variables, then the command.
            words = shlex.split(line.removeprefix("[dry-run] "))
            start = words.index("helm")
            return dict(word.split("=", 1) for word in words[:start]), words[start:]
    raise SystemExit(f"no helm upgrade in the dry run:\n{dry.stdout}{dry.stderr}")


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"`{shlex.join(command)}` failed:\n{result.stdout}{result.stderr}")
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=7)
    pairs = parser.parse_args(argv).pairs
    go_builds.ensure_built(echo=print)
    started_here = not clusters.is_up(CLUSTER)
    with ExitStack() as stack:
        if started_here:
            clusters.up(CLUSTER, echo=print)
            stack.callback(clusters.down, CLUSTER)
        # The chart repository and the OCI registry from their local copies, as the demo has them.
        stack.enter_context(chartrepo.mirror_upstream(chartrepo.mirror_folder()))
        stack.enter_context(chartrepo.mirror_oci_upstream(chartrepo.oci_folder()))
        first = invoke("deploy", "--env=local-staging")
        if first.returncode != 0:
            raise SystemExit(f"the first deploy failed:\n{first.stdout[-3000:]}{first.stderr}")
        env, helm = helm_line()
        helm = [str(go_builds.binary("helm")) if helm[0] == "helm" else helm[0], *helm[1:]]
        step = [sys.executable, "-m", "invoke", *STEP]
        timed(step, {"CI": ""})  # warm-up, as the benchmark's first pair would otherwise be
        a, b = [], []
        for _ in range(pairs):
            a.append(timed(step, {"CI": ""}))
            b.append(timed(helm, env))
        overhead = [x - y for x, y in zip(a, b, strict=True)]
        print(f"pairs: {pairs}; median of each, seconds (min-max)")
        for label, figures in (
            ("invoke upgrade (A)", a),
            ("helm upgrade (B)", b),
            ("overhead A - B", overhead),
        ):
            print(
                f"  {label:<20} {statistics.median(figures):6.2f}  "
                f"({min(figures):.2f}-{max(figures):.2f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
