"""Every import points down: the package's layers, top to bottom, and a walk over every import
(module level and inside functions) that fails on an upward or sideways edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pemma

# Top to bottom; a module may import only from layers below its own.
LAYERS = [
    {"cli"},
    {"search"},
    {"orchestration", "report"},
    {"bench", "suites"},
    {"tasks"},
    {"methods"},
    {"training"},
    {"models", "conditions"},
    {"data", "metrics", "tracking"},
    # plans, profiles: YAML
    {"config", "classes", "files", "locks", "registry", "modalities", "plans", "profiles"},
    {"resources"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}
ROOT = Path(pemma.__file__).parent


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pemma" and len(parts) > 1 else None


def _edges():
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue
        source = _part(".".join(("pemma", *path.relative_to(ROOT).with_suffix("").parts)))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = (
                    [alias.name for alias in node.names] if node.module == "pemma" else [_part(node.module)]
                )
            elif isinstance(node, ast.Import):
                targets = [_part(alias.name) for alias in node.names]
            else:
                continue
            for target in targets:
                if target and target != source:
                    yield path.relative_to(ROOT.parent), node.lineno, source, target


def test_every_top_level_module_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in ROOT.iterdir() if not p.name.startswith("__")}
    names = {n for n in names if (ROOT / n).is_dir() or (ROOT / f"{n}.py").is_file()}
    assert names <= set(LEVEL), f"add to LAYERS: {sorted(names - set(LEVEL))}"


def test_no_import_points_up_or_sideways():
    upward = [
        f"{path}:{line}: {source} imports {target}"
        for path, line, source, target in _edges()
        if LEVEL[target] <= LEVEL[source]
    ]
    assert not upward, "\n".join(upward)
