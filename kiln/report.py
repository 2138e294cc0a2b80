"""A rollout's timeline picture (SVG); the audit log it accompanies lives in `rollout.state`.

The timeline draws, per zone, how many instances of each version the load balancer counted
healthy over time: a rollout shows one colour handing over to the next, zone after zone.
"""

from __future__ import annotations

from html import escape

COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#b279a2", "#9d755d"]


def timeline_svg(samples: list[dict], zones: list[str], title: str) -> str:
    """`samples`: {"t": seconds, "zone": index, "healthy": {version: count}}, in time order."""
    width, row, left, top = 720, 90, 80, 40
    end = max((s["t"] for s in samples), default=1.0) or 1.0
    versions = sorted(
        {v for s in samples for v, n in s["healthy"].items() if n}, key=lambda v: _first_seen(samples, v)
    )
    colour = {v: COLOURS[i % len(COLOURS)] for i, v in enumerate(versions)}
    peak = max((sum(s["healthy"].values()) for s in samples), default=1) or 1
    plot = width - left - 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{top + row * len(zones) + 40}" font-family="sans-serif" font-size="12">',
        f'<text x="{left}" y="20" font-size="14">{escape(title)}</text>',
    ]
    for z, zone in enumerate(zones):
        base = top + row * (z + 1) - 10
        parts.append(f'<text x="8" y="{base - row / 2 + 10}">{escape(zone)}</text>')
        parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot}" y2="{base}" stroke="#999"/>')
        zone_samples = [s for s in samples if s["zone"] == z]
        for k, a in enumerate(zone_samples):
            x0 = left + plot * a["t"] / end
            x1 = left + plot * (zone_samples[k + 1]["t"] if k + 1 < len(zone_samples) else end) / end
            y = base
            for version in versions:
                height = (row - 20) * a["healthy"].get(version, 0) / peak
                if height:
                    parts.append(
                        f'<rect x="{x0:.1f}" y="{y - height:.1f}" width="{max(x1 - x0, 0.5):.1f}" '
                        f'height="{height:.1f}" fill="{colour[version]}"/>'
                    )
                    y -= height
    axis = top + row * len(zones) + 5
    parts.append(f'<text x="{left}" y="{axis}">0 s</text>')
    parts.append(f'<text x="{left + plot - 40}" y="{axis}">{end:.1f} s</text>')
    for i, version in enumerate(versions):
        x = left + 160 * i
        parts.append(f'<rect x="{x}" y="{axis + 12}" width="12" height="12" fill="{colour[version]}"/>')
        parts.append(f'<text x="{x + 16}" y="{axis + 22}">{escape(version)} healthy</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _first_seen(samples: list[dict], version: str) -> float:
    return next(s["t"] for s in samples if s["healthy"].get(version))
