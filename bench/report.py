"""Printing: the environment header, one table per section, the summary, and the JSON file.

Tables are plain fixed-width text so that the output pastes into an issue or a commit
message unchanged. The JSON carries the same numbers unrounded, for comparing runs.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .client import ROOT
from .results import Metric, Section


def environment() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions = {}
    for dist in ("msgspec", "anyio"):  # the daemon's runtime dependencies that matter here
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    return {
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "commit": commit,
        "packages": versions,
    }


def print_environment(env: dict[str, Any]) -> None:
    print("Warren benchmark")
    print(f"  CPUs      {env['cpu_count']} ({env['cpus_usable']} usable)  {env['cpu_model']}")
    print(f"  Python    {env['python']}  ({env['python_executable']})")
    print(f"  SQLite    {env['sqlite']}")
    print(f"  Platform  {env['platform']}")
    print("  Packages  " + "  ".join(f"{k} {v}" for k, v in env["packages"].items()))
    if env["commit"]:
        print(f"  Commit    {env['commit']} (plus any uncommitted changes in the work tree)")
    print(f"  Load      {_load(env['load_average'])}")
    print()


BUSY = 0.5  # 1-minute load average above which other work is probably skewing the numbers


def _load(load: tuple[float, float, float]) -> str:
    text = " ".join(f"{x:.2f}" for x in load) + " (1, 5, 15 min)"
    if load[0] > BUSY:
        text += "  WARNING: the machine is busy with other work; numbers will be noisy and slow"
    return text


def cpu_snapshot() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its
    waited-for children): the difference over a run is other people's work."""
    busy = 0.0
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def other_cpu_share(start: tuple[float, float], end: tuple[float, float], wall: float) -> float:
    """CPU used by other processes between two snapshots, as a fraction of one core."""
    other = max(0.0, (end[0] - start[0]) - (end[1] - start[1]))
    return other / wall if wall > 0 else 0.0


NOISY = 0.25  # other processes using more than this share of a core skew the numbers


def print_interference(start: tuple[float, float], end: tuple[float, float], wall: float) -> float:
    """Report how much CPU other processes used while the benchmark ran."""
    share = other_cpu_share(start, end, wall)
    text = f"Other processes used {share * wall:.1f} CPU-s during the run ({share:.0%} of one core on average)"
    if share > NOISY:
        text += ": the numbers above are skewed by other work on this machine"
    print(text)
    return share


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    if unit == "MB":
        return f"{value:.1f}"
    if unit == "CPU-s":
        return f"{value:.3f}"
    if unit == "x":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def _met(metric: Metric) -> str:
    if metric.target is None:
        return ""
    text = "yes" if metric.met else "NO"
    p99 = metric.stats.get("p99")
    if metric.unit == "ms" and p99 is not None and not metric.target.met(p99):
        text += " (p99 over)"
    return text


HEADER = ("metric", "value", "unit", "min", "p90", "p99", "n", "target", "met")


def print_section(section: Section) -> None:
    other = section.other_cpu_share
    busy = "" if other is None else f", other processes {other:.0%} of a core" + (" - NOISY" if other > NOISY else "")
    print(f"{section.key}. {section.title}  [{section.seconds:.1f} s{busy}]")
    rows = [HEADER]
    for m in section.metrics:
        stats = m.stats
        rows.append((
            ("  " if m.detail else "") + m.name,
            _fmt(m.value, m.unit),
            m.unit,
            _fmt(stats.get("min"), m.unit),
            _fmt(stats.get("p90"), m.unit),
            _fmt(stats.get("p99"), m.unit),
            f"{m.n:,}" if m.n > 1 else "",
            f"{m.target} {m.unit}" if m.target else "",
            _met(m),
        ))
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
        for r in rows:
            cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:-1], widths[1:-1])] + [r[-1]]
            print("  " + "  ".join(cells).rstrip())
    for note in section.notes:
        print(f"  {note}")
    if section.error:
        print(f"  ERROR: {section.error}")
    print()


def print_summary(sections: list[Section]) -> None:
    judged = [m for s in sections for m in s.metrics if m.target is not None]
    missed = [m for m in judged if not m.met]
    failed = [s for s in sections if s.error]
    print(f"Summary: {len(judged) - len(missed)} of {len(judged)} targets met"
          + (f"; {len(failed)} section(s) could not be measured" if failed else ""))
    for m in missed:
        print(f"  missed: {m.name}: {_fmt(m.value, m.unit)} {m.unit} (target {m.target} {m.unit})")
    for s in failed:
        print(f"  error:  {s.key}. {s.title}: {s.error}")


def write_json(path: Path, env: dict[str, Any], sections: list[Section], extra: dict[str, Any]) -> None:
    data = {"environment": env, "sections": [s.to_json() for s in sections], **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
