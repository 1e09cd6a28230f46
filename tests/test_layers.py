"""Layering of the library: ``solar.eval`` evaluates and never trains (it does not import
``solar.train``); ``solar.experiments`` sits above both and nothing below imports it; no mock
objects in the library."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import solar

ROOT = Path(solar.__file__).resolve().parent


def _imports(path: Path, package: str) -> set:
    """Absolute names of the modules a source file imports (relative imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


def _layer_imports(layer: str) -> dict:
    out = {}
    for path in sorted((ROOT / layer).rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        out[str(rel)] = _imports(path, ".".join(rel.parts[:-1]))      # the file's package
    return out


def _hits(imports: dict, forbidden: tuple) -> dict:
    """{file: the imported names inside one of the ``forbidden`` packages}, files with any."""
    inside = lambda n: any(n == p or n.startswith(p + ".") for p in forbidden)  # noqa: E731
    hits = {f: sorted(n for n in names if inside(n)) for f, names in imports.items()}
    return {f: h for f, h in hits.items() if h}


def test_eval_sources_do_not_import_train_or_experiments():
    imports = _layer_imports("eval")
    assert "solar/eval/evaluate" in imports                   # the scan sees the layer
    assert _hits(imports, ("solar.train", "solar.experiments")) == {}


def test_train_sources_do_not_import_experiments():
    assert _hits(_layer_imports("train"), ("solar.experiments",)) == {}


def test_train_reaches_eval_only_for_the_mask_probe():
    """Training logs mask-benchmark metrics (``mask_probe_every``), the one use of solar.eval
    in solar.train; what composites and the benchmark share lives in solar.data."""
    hits = _hits(_layer_imports("train"), ("solar.eval",))
    assert set(hits) <= {"solar/train/recipes"}, hits
    assert all(n.startswith(("solar.eval.mask_metrics", "solar.eval.masks")) for n in
               hits.get("solar/train/recipes", [])), hits


def test_experiments_sit_above_train_and_eval():
    names = set().union(*_layer_imports("experiments").values())
    assert any(n.startswith("solar.train") for n in names)
    assert any(n.startswith("solar.eval") for n in names)


def test_importing_every_eval_module_loads_no_training_code():
    """At run time too: every solar.eval module imported, and still no solar.train module."""
    code = ("import importlib, json, pkgutil, sys\n"
            "import solar.eval\n"
            "done, missing = [], []\n"
            "for m in pkgutil.walk_packages(solar.eval.__path__, 'solar.eval.'):\n"
            "    try:\n"
            "        importlib.import_module(m.name); done.append(m.name)\n"
            "    except ImportError as err:\n"
            "        if (err.name or '').startswith('solar'):\n"
            "            raise\n"
            "        missing.append(m.name)\n"
            "bad = [m for m in sys.modules if m.startswith(('solar.train', 'solar.experiments'))]\n"
            "print(json.dumps({'done': done, 'missing': missing, 'bad': bad}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "solar.eval.evaluate" in out["done"] and "solar.eval.masks" in out["done"]
    assert out["bad"] == [], out


def test_no_mock_in_the_library():
    roots = [ROOT, ROOT.parent / "milvus_plugin", ROOT.parent / "kernels"]
    found = {}
    for root in roots:
        for path in root.rglob("*.py"):
            names = _imports(path, "x")
            bad = sorted(n for n in names if n == "mock" or n.startswith(("unittest.mock", "mock.")))
            if bad:
                found[str(path)] = bad
    assert found == {}
