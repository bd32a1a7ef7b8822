"""Opening the public release's files safely, and the renaming rules between its key names and ours."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import SVGError
from ..utils.pretrained import load_torch_file


def load_public_file(path: str | Path, what: str, trust_pickle: bool = False) -> Any:
    """The content of a public ``.ckpt``/``.pt`` file: tensors and plain containers only, unless ``trust_pickle``
    (see :func:`~svg_diffusion.utils.pretrained.load_torch_file`)."""
    path = Path(path)
    if not path.is_file():
        raise SVGError(f"{what} not found: {path}")
    return load_torch_file(path, trust_pickle)


def tensor_dict(value: Any, path: str | Path, what: str) -> dict[str, Tensor]:
    if not isinstance(value, dict) or not value or not all(isinstance(v, Tensor) for v in value.values()):
        raise SVGError(f"{path}: expected {what}")
    return dict(value)


def section(data: Any, dotted: str, where: str) -> dict:
    """The mapping at ``dotted`` (e.g. "model.params") of a YAML document; SVGError naming it if absent."""
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            raise SVGError(f"{where}: {dotted} is missing (expected the public SVG config layout)")
        node = node[part]
    return node


def key_rules(pairs: list[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    """Compile renaming rules ``(public, ours)`` into (pattern on our key, public template) pairs.

    ``{}`` in a rule stands for a block index; a rule ending in "." renames a prefix.
    """
    compiled = []
    for public, ours in pairs:
        pattern = r"(\d+)".join(re.escape(part) for part in ours.split("{}"))
        if ours.endswith("."):
            pattern, public = pattern + "(.+)", public + "{}"
        compiled.append((re.compile(pattern), public))
    return compiled


def public_key(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    """The public name of our ``key``; None when it has none (an entry only our model has)."""
    for pattern, public in rules:
        match = pattern.fullmatch(key)
        if match:
            return public.format(*match.groups())
    return None
