"""The package's imports flow one way (the layers of ``svg_diffusion/__init__.py``): a module imports only from
its own layer and the layers below it, function-level imports included."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "svg_diffusion"
# Lowest first; the foundation (errors, config, utils, the training engine) serves every layer.
LAYERS = [
    {"errors", "config", "utils", "training"},
    {"data"},
    {"encoders"},
    {"autoencoder"},
    {"diffusion"},
    {"pipeline"},
    {"sample_writer"},
    {"evaluation"},
    {"demo", "trainers", "official", "encode_dataset"},
    {"export"},
    {"cli"},
]
LAYER = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def top_level(module: Path) -> str:
    """The package member a file belongs to: ``encoders`` for encoders/vit.py, ``pipeline`` for pipeline.py."""
    return module.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_members(module: Path) -> set[str]:
    """The package members ``module`` imports (relative imports resolved against its own folder)."""
    here = module.relative_to(PACKAGE).parent.parts
    members = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = list(here[: len(here) - (node.level - 1)]) + (node.module.split(".") if node.module else [])
            names = parts[:1] if parts else [alias.name for alias in node.names]
            members.update(names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            absolute = [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
            members.update(name.split(".")[1] for name in absolute if name and name.startswith("svg_diffusion."))
    return members


def test_every_member_has_a_layer():
    members = {top_level(path) for path in PACKAGE.rglob("*.py")} - {"__init__"}
    assert members == set(LAYER), members ^ set(LAYER)


def test_imports_flow_from_the_foundation_up():
    upward = [
        f"{path.relative_to(PACKAGE)} imports {member}"
        for path in sorted(PACKAGE.rglob("*.py")) if top_level(path) != "__init__"
        for member in imported_members(path) if LAYER[member] > LAYER[top_level(path)]
    ]
    assert not upward, "\n".join(upward)
