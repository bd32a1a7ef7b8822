"""The ``save_pretrained`` / ``from_pretrained`` folder format shared by our models (diffusers-style).

A model folder holds ``config.json`` = ``{"format": <name>, "config": <dataclass as a dict>, ...extra}`` and
``model.safetensors`` (its state dict). Both are written atomically, so a crash never leaves a half-written
model; reading checks the format name first, so handing one kind of folder to another loader fails by name.

Every PyTorch (pickle) file the package reads goes through :func:`load_torch_file`, which never runs code
from the file unless the caller opts in.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import from_dict, to_dict
from ..errors import SVGError
from .files import atomic_path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

T = TypeVar("T")
M = TypeVar("M", bound=torch.nn.Module)

# torch's weights-only unpickler names the first object it refuses to rebuild, e.g. "argparse.Namespace".
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_torch_file(path: str | Path, trust_pickle: bool = False) -> Any:
    """``torch.load(path)`` on the CPU that runs no code from the file unless ``trust_pickle``.

    A pickle can hold any object, and rebuilding one runs code that the file names: ``weights_only=True``
    rebuilds only tensors and plain containers and refuses the rest. A refused file (a Lightning checkpoint's
    pickled hyper-parameters, a whole pickled model) raises an SVGError that says so and names the safe ways
    on, never torch's advice to retry with ``weights_only=False``. ``trust_pickle=True`` is that retry, for a
    file whose source the user trusts. A damaged file raises SVGError too.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused is None:  # the weights-only unpickler stops at an "unsupported operand" of junk or a plain pickle
            raise SVGError(f"{path}: not a readable PyTorch file (damaged, or not written by torch.save)") from None
        raise SVGError(
            f"{path}: refused: loading this file needs code execution (it holds a pickled {refused[1]!r}, not "
            "only tensors). Safe ways on: convert the public SVG checkpoints with `svg-diffusion convert-official`, "
            "adding --trust-pickle (Python: trust_pickle=True) only for a file you trust; re-save another trusted "
            "file's tensors alone (torch.save(model.state_dict()))"
        ) from None
    except Exception as err:  # torch raises many types for a damaged file (RuntimeError, EOFError, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SVGError(f"{path}: not a readable PyTorch file ({reason})") from None


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a ``.pth``/``.pt`` flat state dict (see :func:`load_torch_file`)."""
    path = Path(path)
    if not path.is_file():
        raise SVGError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as err:
            raise SVGError(f"{path}: not a readable safetensors file ({err})") from None
    state = load_torch_file(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SVGError(f"{path}: expected a flat state dict of tensors")
    return state


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SVGError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise SVGError(f"{path}: expected a JSON object")
    return data


def write_json(path: str | Path, data: dict) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_pretrained(folder: str | Path, format_name: str, config: Any, state: dict[str, torch.Tensor],
                     **extra: Any) -> Path:
    """Write ``folder/model.safetensors`` (``state``, on the CPU) and ``folder/config.json``; return ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in state.items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": format_name})
    write_json(folder / CONFIG_FILE, {"format": format_name, "config": to_dict(config), **extra})
    return folder


def stored_state(module: torch.nn.Module, parameter_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``module``'s state dict with its floating-point parameters as ``parameter_dtype`` (None: unchanged).

    Storing float16 halves a weights file; loading upcasts (``load_state_dict`` copies into the model's own
    float32 tensors). Buffers (running statistics, fixed tables) keep their precision.
    """
    state = module.state_dict()
    if parameter_dtype is None:
        return state
    parameters = {name for name, p in module.named_parameters() if p.is_floating_point()}
    return {name: t.to(parameter_dtype) if name in parameters else t for name, t in state.items()}


def read_format_file(path: str | Path, format_name: str, what: str, hint: str = "") -> dict:
    """The JSON object that describes a saved folder (its ``config.json``, an index), checked to be of
    ``format_name``. A missing file means the folder is not ``what`` (``hint``: how to make one)."""
    path = Path(path)
    if not path.is_file():
        raise SVGError(f"{path.parent} is not {what}: {path.name} is missing{hint}")
    meta = read_json(path)
    if meta.get("format") != format_name:
        raise SVGError(f"{path}: expected format {format_name!r}, found {meta.get('format')!r}")
    return meta


def read_pretrained_config(folder: str | Path, format_name: str, config_cls: type[T]) -> tuple[T, dict]:
    """The typed config of a folder written by :func:`write_pretrained`, and the whole ``config.json``."""
    path = Path(folder) / CONFIG_FILE
    meta = read_format_file(path, format_name, f"a saved {format_name} folder")
    return from_dict(config_cls, meta.get("config"), where=str(path)), meta


def read_pretrained_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a folder written by :func:`write_pretrained`."""
    return read_state_file(Path(folder) / WEIGHTS_FILE)


def load_pretrained(model_cls: type[M], folder: str | Path, format_name: str, config_cls: type, what: str) -> M:
    """``model_cls(config)`` for a folder written by :func:`write_pretrained` of a whole module, its weights
    loaded strictly (``what`` names the model in errors); on the CPU, in eval mode."""
    config, _ = read_pretrained_config(folder, format_name, config_cls)
    model = model_cls(config)
    load_state_dict_strict(model, read_pretrained_state(folder), str(folder), what)
    return model.eval()


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same keys with equal tensors (``b``'s compared on ``a``'s device)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].device)) for k in a)


def check_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, what: str = "the model") -> None:
    """Raise SVGError unless ``state`` has exactly ``module``'s keys with the same shapes, naming the misfits."""
    check_keys_and_shapes(state, {key: value.shape for key, value in module.state_dict().items()}, source, what)


def check_keys_and_shapes(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str,
                          what: str) -> None:
    """Raise SVGError unless ``state`` has exactly the ``expected`` keys and shapes, naming the misfits."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, expected {tuple(expected[k])})"
        for k in expected
        if k in state and state[k].shape != expected[k]
    ]
    problems = [
        f"{label}: {_some(names)}"
        for label, names in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched))
        if names
    ]
    if problems:
        raise SVGError(f"{source} does not fit {what}: " + "; ".join(problems))


def load_state_dict_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                           what: str = "the model") -> None:
    """:func:`check_state_dict`, then load ``state`` into ``module``."""
    check_state_dict(module, state, source, what)
    module.load_state_dict(state)


def _some(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
