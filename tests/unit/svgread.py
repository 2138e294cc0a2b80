"""What a reader of a chart sees, parsed from its SVG: texts, tick labels and marks (by id)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

SVG = "{http://www.w3.org/2000/svg}"


@dataclass
class Chart:
    root: ET.Element

    @classmethod
    def parse(cls, svg: str) -> Chart:
        root = ET.fromstring(svg)
        assert root.tag == f"{SVG}svg"
        return cls(root)

    def texts(self, within: ET.Element | None = None) -> list[str]:
        return ["".join(t.itertext()).strip() for t in (within or self.root).iter(f"{SVG}text")]

    def ids(self) -> set[str]:
        return {e.get("id") for e in self.root.iter() if e.get("id")}

    def marks(self, prefix: str) -> set[str]:
        return {i for i in self.ids() if i.startswith(prefix)}

    def group(self, gid: str) -> ET.Element:
        return next(e for e in self.root.iter(f"{SVG}g") if e.get("id") == gid)

    def tick_labels(self, axis: str, within: ET.Element | None = None) -> list[str]:
        """Labels of the `x` or `y` ticks, in order (matplotlib groups them as xtick_N / ytick_N)."""
        groups = [
            g for g in (within or self.root).iter(f"{SVG}g") if (g.get("id") or "").startswith(f"{axis}tick_")
        ]
        return [label for g in groups for label in self.texts(g) if label]
