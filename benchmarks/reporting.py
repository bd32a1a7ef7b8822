"""What the benchmark scripts share: the repository's folders, and writing results where people read them.

- ``replace_block``: rewrite the text between two HTML-comment markers of a docs page (tables, notes);
- ``Results``: a nested JSON results file that a long benchmark updates after every measurement, and that
  several processes of it may update at once.

The scripts import it as a sibling module: ``python benchmarks/<script>.py`` puts this folder on the path.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

from svg_diffusion.utils.files import atomic_path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
IMAGES = DOCS / "images"


def replace_block(path: Path, start: str, end: str, text: str, heading: str | None = None) -> None:
    """Put ``text`` between the markers ``start`` and ``end`` of ``path`` (atomically), replacing what was there.

    A page without the markers gets ``heading`` and the marked block appended when ``heading`` is given
    ("" for none); otherwise that is an error, since the block's place in the page is chosen by hand.
    """
    page = path.read_text() if path.is_file() else ""
    block = f"{start}\n{text}\n{end}"
    if start in page and end in page:
        page = page[: page.index(start)] + block + page[page.index(end) + len(end):]
    elif heading is not None:
        page = page.rstrip("\n") + f"\n\n{heading}{block}\n"
    else:
        raise SystemExit(f"{path} has no {start} ... {end} block")
    with atomic_path(path) as tmp:
        tmp.write_text(page)


class Results:
    """A results JSON file: a nested dict written atomically after every measurement, safe to share between
    processes (a write re-reads the file under an exclusive lock, so another process's entries are kept)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = self._read()

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get(self, *keys):
        node = self.data
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    def put(self, value, *keys) -> None:
        self._update(lambda _: value, keys)

    def add(self, amount: float, *keys) -> None:
        """Add to a number (missing: 0), e.g. wall time of a stage that several processes share."""
        self._update(lambda old: (old or 0) + amount, keys)

    def _update(self, new_value, keys) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.data = self._read()
            node = self.data
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = new_value(node.get(keys[-1]))
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.data, indent=2) + "\n")
