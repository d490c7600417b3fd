"""The package layering, enforced: every trtbuild import (lazy ones inside functions included) goes to
the same package or to one on a lower layer, and no module imports another module's `_private` name.

    common                       ground: specs, errors, fs, corpus, layout, rope, Medusa/lookahead combinatorics
    convert, runtime             HF -> checkpoint; the reference runtime (decoding core, scheduler)
    triton_repo, quantize        the model repository and the Python models it ships (they run the runtime);
                                 quantized checkpoints through ModelOpt (convert's writer, the runtime's check)
    builder, tuning              build (convert + engine + repository + self-check); train / tune speculation
    serve                        tritonserver supervision and clients
    bench, deploy, openai_api    load generation; k8s, images, preflight; the OpenAI-compatible frontend
    cli                          parsing only

Packages on one layer do not import each other. `trtbuild/__init__.py` holds only the version.
"""

from __future__ import annotations

import ast
from pathlib import Path

import trtbuild

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"", "common"}),  # "" = trtbuild/__init__.py (__version__)
    frozenset({"convert", "runtime"}),
    frozenset({"triton_repo", "quantize"}),
    frozenset({"builder", "tuning"}),
    frozenset({"serve"}),
    frozenset({"bench", "deploy", "openai_api"}),
    frozenset({"cli"}),
)
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _package(module: str) -> str:
    """'trtbuild.runtime.model' -> 'runtime'; 'trtbuild' -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path) -> list[tuple[str, str, tuple[str, ...], int]]:
    """(importing module, imported module, names imported from it, line) for every trtbuild import."""
    out = []
    for path in sorted(root.rglob("*.py")):
        mod = _module_name(root, path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                    node.module == "trtbuild" or node.module.startswith("trtbuild.")):
                out.append((mod, node.module, tuple(a.name for a in node.names), node.lineno))
            elif isinstance(node, ast.Import):
                out += [(mod, a.name, (), node.lineno) for a in node.names
                        if a.name == "trtbuild" or a.name.startswith("trtbuild.")]
    return out


def violations(root: Path) -> list[str]:
    """Every import that breaks the layering or reaches into another module's private names."""
    bad = []
    for src, dst, names, line in imports(root):
        a, b = _package(src), _package(dst)
        where = f"{src}:{line} imports {dst}"
        if a not in RANK or b not in RANK:
            bad.append(f"{where}: package {a if a not in RANK else b!r} is on no layer")
        elif a != b and b != "" and RANK[b] >= RANK[a]:
            bad.append(f"{where}: {b!r} is not below {a!r}")
        for name in names:
            if name.startswith("_") and not name.startswith("__"):
                # a subpackage's module importing a name it defines itself is not cross-module
                bad.append(f"{where}: private name {name}")
    return bad


def test_the_package_layering_holds():
    root = Path(trtbuild.__file__).parent
    assert violations(root) == []


def test_every_package_is_on_a_layer():
    root = Path(trtbuild.__file__).parent
    pkgs = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    mods = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    assert pkgs | mods <= set(RANK), f"not on a layer: {sorted((pkgs | mods) - set(RANK))}"


def test_every_package_says_what_it_owns_and_may_import():
    root = Path(trtbuild.__file__).parent
    for init in sorted(root.glob("*/__init__.py")):
        if init.parent.name == "models":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"{init}: the docstring should say what the package may import"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "trtbuild"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_the_checker_catches_a_cycle_an_upward_import_and_a_private_name(tmp_path):
    # today's shapes before the layering: runtime <-> tuning (choices vs tune), convert <-> runtime, a
    # lazy import inside a function, and the scheduler reaching into lookahead's private names
    root = _tree(tmp_path, {
        "__init__.py": "",
        "runtime/__init__.py": "",
        "runtime/scheduler.py": "from trtbuild.runtime.lookahead import _RowState\n",
        "runtime/lookahead.py": "def f():\n    from trtbuild.tuning.tune_lookahead import tune\n",
        "tuning/__init__.py": "",
        "tuning/tune_lookahead.py": "from trtbuild.runtime.lookahead import f\n",
        "convert/__init__.py": "import trtbuild.runtime.model\n",
    })
    bad = violations(root)
    assert any("runtime.lookahead:2 imports trtbuild.tuning.tune_lookahead: 'tuning' is not below 'runtime'" in v
               for v in bad), bad
    assert any("'runtime' is not below 'convert'" in v for v in bad), bad
    assert any("private name _RowState" in v for v in bad), bad
    assert not any(v.startswith("trtbuild.tuning.tune_lookahead") for v in bad), bad  # downward: fine
    assert len(bad) == 3


def test_the_checker_knows_no_unlisted_package(tmp_path):
    root = _tree(tmp_path, {"__init__.py": "", "medusa/__init__.py": "from trtbuild.runtime import x\n"})
    assert violations(root) == ["trtbuild.medusa:1 imports trtbuild.runtime: package 'medusa' is on no layer"]
