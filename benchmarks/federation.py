"""A federation's members' phase against its slowest member deployed alone.

On throwaway local clusters: one for the gate and one per member
(`binder-fed-gate`, `binder-fed-1`, ...), each started if not up and stopped
at the end. Every member deploys the same chart with the same values (the
demo's local-prod layers). For each member, a group of that member alone is
deployed; then groups of 2 and 3 members. Each run is a real `invoke deploy
--env=GROUP --yes` in a subprocess, into fresh namespaces (a first install
every time), and its figures come from the run's JSON report:

    members' phase   from the first step of any member (check-promotion) to
                     the last step of any member (unlock), in wall time
    ratio            a group's members' phase over the slowest of its members'
                     phases when deployed alone
    CPU busy         the share of the machine's cores busy during the members'
                     phase (/proc/stat: every process, control planes included)

    python benchmarks/federation.py                      # 1, 2 and 3 members, 3 runs each
    python benchmarks/federation.py --members 2 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

# Run as a script from the project root: `tasks` and `tests` are importable from there.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox import chartrepo, clusters  # noqa: E402
from tasks.adapters import go_builds  # noqa: E402
from tasks.core.errors import StepFailure  # noqa: E402
from tests.fixtures.site_chart import remove_release_leftovers  # noqa: E402

GATE_CLUSTER = "binder-fed-gate"
REPORT = ROOT / "reports" / "run-deploy.json"
# The same chart and values for every member: the demo member's layers.
MEMBER_VALUES = ["config/local-prod.yaml"]
GATE_VALUES = ["config/local-staging.yaml"]
DEMO_SECRETS = ROOT / "secrets" / "demo"
DEMO_KEY = {"source": "file", "name": "demo", "path": "config/demo/git-crypt-demo.key"}


def member_cluster(index: int) -> str:
    return f"binder-fed-{index}"


def environment(
    cluster: str, namespace: str, extra: list[str], gated: bool, secrets: Path
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "cluster": {"kind": "local", "name": cluster},
        "release": f"b{namespace.rsplit('-', 1)[-1]}",
        "namespace": namespace,
        "secrets": {"dir": str(secrets), "key": DEMO_KEY},
        "extra_values": extra,
        "grafana": None,
        "timeouts": {"upgrade": 300, "rollout": 300, "smoke": 300},
    }
    if gated:
        env["gated_by"] = "gate"
    return env


def registry(folder: Path, members: list[int]) -> tuple[Path, dict[str, tuple[str, str]]]:
    """A registry of the gate and `members` in fresh namespaces, and the group `bench`."""
    suffix = uuid.uuid4().hex[:6]
    placed = {"gate": (GATE_CLUSTER, f"fed-gate-{suffix}")}
    placed |= {f"member-{i}": (member_cluster(i), f"fed-member-{i}-{suffix}") for i in members}
    secrets = bench_secrets(folder, list(placed))
    environments = {
        name: environment(
            cluster,
            namespace,
            GATE_VALUES if name == "gate" else MEMBER_VALUES,
            name != "gate",
            secrets,
        )
        for name, (cluster, namespace) in placed.items()
    }
    group = {"members": [f"member-{i}" for i in members]}
    document = {"chart": "mybinder", "environments": environments, "groups": {"bench": group}}
    path = folder / f"registry-{suffix}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path, placed


def bench_secrets(folder: Path, names: list[str]) -> Path:
    """A secrets folder for the benchmark's environments: the demo's secret layers, as
    `<name>.yaml` (the registry wants one per environment), read from the unlocked demo."""
    secrets = folder / "secrets"
    (secrets / "config").mkdir(parents=True, exist_ok=True)
    demo = DEMO_SECRETS / "config"
    (secrets / "config" / "common.yaml").write_bytes((demo / "common.yaml").read_bytes())
    for name in names:
        layer = "local-staging.yaml" if name == "gate" else "local-prod.yaml"
        (secrets / "config" / f"{name}.yaml").write_bytes((demo / layer).read_bytes())
    return secrets


class CpuSampler(threading.Thread):
    """The machine's busy and total CPU time (/proc/stat), sampled while a deploy runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            fields = [int(f) for f in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
            idle = fields[3] + fields[4]  # idle, iowait
            self.samples.append((time.time(), sum(fields) - idle, sum(fields)))
            self.done.wait(0.2)

    def busy(self, start: float, end: float) -> float:
        """The share of every core that was busy between `start` and `end`."""
        inside = [s for s in self.samples if start <= s[0] <= end] or self.samples[-1:]
        first, last = inside[0], inside[-1]
        total = last[2] - first[2]
        return (last[1] - first[1]) / total if total else 0.0


def members_phase(document: dict[str, Any], members: list[str]) -> dict[str, float]:
    """Wall seconds of the members' phase, and of each member's own steps."""
    spans: dict[str, tuple[float, float]] = {}
    for step in document["steps"]:
        if step["environment"] not in members or step["step"] in ("validate", "preflight"):
            continue
        start = datetime.fromisoformat(step["start"]).timestamp()
        end = datetime.fromisoformat(step["end"]).timestamp()
        first, last = spans.get(step["environment"], (start, end))
        spans[step["environment"]] = (min(first, start), max(last, end))
    first = min(start for start, _ in spans.values())
    last = max(end for _, end in spans.values())
    figures = {name: end - start for name, (start, end) in spans.items()}
    return {"phase": last - first, "phase_start": first, "phase_end": last, **figures}


def deploy(folder: Path, members: list[int]) -> dict[str, float]:
    path, placed = registry(folder, members)
    sampler = CpuSampler()
    sampler.start()
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "invoke", "deploy", "--env=bench", "--yes"],
            cwd=ROOT,
            env={**os.environ, "DEPLOY_REGISTRY": str(path), "SMOKE_WARMUP_SECONDS": "2"},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        wall = time.monotonic() - started
        sampler.done.set()
        if result.returncode != 0:
            said = result.stdout[-3000:] + result.stderr[-3000:]
            raise SystemExit(f"the deploy of members {members} failed:\n{said}")
        figures = members_phase(json.loads(REPORT.read_text()), [f"member-{i}" for i in members])
        busy = sampler.busy(figures["phase_start"], figures["phase_end"])
        return {**figures, "wall": wall, "load": os.getloadavg()[0], "busy": busy}
    finally:
        for cluster, namespace in placed.values():
            remove_release_leftovers(cluster, f"b{namespace.rsplit('-', 1)[-1]}", namespace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--members", type=int, default=3, help="the largest group (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per group (median)")
    parser.add_argument("--keep", action="store_true", help="leave the clusters running")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args(argv)
    names = [GATE_CLUSTER, *(member_cluster(i) for i in range(1, args.members + 1))]
    started_here = [name for name in names if not clusters.is_up(name)]
    go_builds.ensure_built()
    # The benchmark's secret layers are copies of the demo's, which must be unlocked first.
    subprocess.run(
        [sys.executable, "-m", "invoke", "decrypt-secrets", "--env=local-staging"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    for name in names:
        clusters.up(name)
    try:
        folder_copy = chartrepo.mirror_folder()
    except StepFailure:
        folder_copy = None
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        mirror = chartrepo.mirror_upstream(folder_copy) if folder_copy else nullcontext()
        with mirror, tempfile.TemporaryDirectory(prefix="federation-bench-") as folder:
            groups = [[i] for i in range(1, args.members + 1)]
            groups += [list(range(1, size + 1)) for size in range(2, args.members + 1)]
            for _ in range(args.repeat):
                for members in groups:
                    key = ",".join(map(str, members))
                    figures = deploy(Path(folder), members)
                    runs.setdefault(key, []).append(figures)
                    print(
                        f"members {key:<7} phase {figures['phase']:6.1f}s, CPU busy "
                        f"{figures['busy']:4.0%}  (whole deploy {figures['wall']:.1f}s, "
                        f"load {figures['load']:.1f})",
                        flush=True,
                    )
        print()
        print(table(runs, args.members))
        if args.json:
            args.json.write_text(json.dumps(runs, indent=2))
    finally:
        if not args.keep:
            for name in started_here:
                clusters.down(name)
    return 0


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def table(runs: dict[str, list[dict[str, float]]], largest: int) -> str:
    alone = {i: median(runs[str(i)], "phase") for i in range(1, largest + 1)}
    header = f"{'GROUP':<10}{'MEMBERS PHASE':>15}{'SLOWEST ALONE':>15}{'RATIO':>8}{'CPU BUSY':>10}"
    lines = [header + "  EACH MEMBER'S OWN STEPS"]
    for size in range(1, largest + 1):
        members = list(range(1, size + 1))
        key = ",".join(map(str, members))
        phase = median(runs[key], "phase")
        slowest = max(alone[i] for i in members)
        own = ", ".join(f"{median(runs[key], f'member-{i}'):.1f}s" for i in members)
        busy = median(runs[key], "busy")
        ratio = phase / slowest
        row = f"{size:<10}{phase:>14.1f}s{slowest:>14.1f}s{ratio:>7.2f}x{busy:>10.0%}"
        lines.append(f"{row}  {own}")
    loads = [run["load"] for group in runs.values() for run in group]
    lines.append(
        f"medians of {len(next(iter(runs.values())))} run(s); {os.cpu_count()} cores; "
        f"load average {min(loads):.1f} to {max(loads):.1f} during the runs"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
