"""``bench/results.svg``: the run at a glance, drawn with matplotlib by ``python -m bench``.

Left: wall time and time to first segment per system (main input). Right: when each of
streamscribe's segments arrived (one tick per segment), beside each peer's first and last
output, on one time axis from launch.
"""

from __future__ import annotations

from pathlib import Path

CHART_NAME = "results.svg"


def draw_chart(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display here; SVG only
    import matplotlib.pyplot as plt

    runs = {name: run for name, run in results.get("systems", {}).items() if run}
    names = list(runs)
    fig, (bars, timeline) = plt.subplots(1, 2, figsize=(12, 0.6 * len(names) + 2.2))
    rows = range(len(names))
    walls = [runs[n]["wall_s"] for n in names]
    firsts = [runs[n]["first_segment_s"] or 0.0 for n in names]
    bars.barh(rows, walls, color="#9bb8d9", label="wall")
    bars.barh(rows, firsts, color="#1f4e8c", label="first segment")
    for row, wall in zip(rows, walls, strict=True):
        bars.text(wall, row, f" {wall:.1f} s", va="center", fontsize=8)
    bars.set_yticks(list(rows), names)
    bars.invert_yaxis()
    bars.set_xlabel("seconds from launch")
    bars.set_title("wall time and time to first segment")
    bars.legend(loc="lower right", fontsize=8)

    for row, name in zip(rows, names, strict=True):
        arrivals = runs[name].get("arrivals") or []
        if not arrivals:
            continue
        if name.startswith("streamscribe"):
            timeline.plot(arrivals, [row] * len(arrivals), "|", color="#1f4e8c", markersize=12)
        else:
            timeline.plot([arrivals[0], arrivals[-1]], [row, row], "o-", color="#c0504d", markersize=5)
    timeline.set_yticks(list(rows), names)
    timeline.invert_yaxis()
    timeline.set_xlabel("seconds from launch")
    timeline.set_title("streamscribe: each segment's arrival; peers: first → last output")
    machine = results.get("machine", {})
    fig.suptitle(
        f"{results.get('input', {}).get('duration_s', 0) / 60:.1f} min input, "
        f"{machine.get('cores')} cores, load {machine.get('loadavg_start')}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)
    return path
