"""No folder or file of the repo shadows another distribution's import name.

`python -m ...` and a plain `python` started in the repo root put the root first on `sys.path`,
and pytest puts `tests/` and `bench/` there too, so anything importable from those folders wins
over installed packages of the same top-level name.  transformers imports Hugging Face's kernel
hub as `kernels`; a `kernels/__init__.py` at the root once broke every fresh clone.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN_DISTRIBUTIONS = {"solar-mm", "solar_mm"}


def _importable_names(folder: Path) -> set[str]:
    """Top-level names a folder on sys.path provides first: regular packages and modules.

    A folder without ``__init__.py`` is only a namespace portion, used when no installed package
    or module of that name exists, so it shadows nothing."""
    names = set()
    for p in folder.iterdir():
        if p.name.startswith((".", "_")) or p.name == "__pycache__":
            continue
        if p.is_dir() and p.name.isidentifier() and (p / "__init__.py").exists():
            names.add(p.name)
        elif p.suffix == ".py" and p.stem.isidentifier():
            names.add(p.stem)
    return names


def _foreign_top_levels() -> dict[str, list[str]]:
    """{top-level import name: [distributions]} of every installed distribution but ours."""
    return {name: dists for name, dists in importlib.metadata.packages_distributions().items()
            if not OWN_DISTRIBUTIONS & set(dists)}


@pytest.mark.parametrize("folder", [".", "tests", "bench"])
def test_no_repo_name_is_another_distributions_import_name(folder):
    foreign = _foreign_top_levels()
    clash = {n: foreign[n] for n in _importable_names(ROOT / folder) if n in foreign}
    assert not clash, (f"{folder}/ provides import names that installed distributions own "
                       f"(they would shadow them): {clash}")


def test_no_package_init_in_the_mapped_folders():
    # kernels/ and milvus_plugin/ hold their packages one level down (solar_kernels, solar_milvus)
    for folder in ("kernels", "milvus_plugin"):
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/__init__.py shadows imports"


_PROBE = r"""
import importlib.util, json, sys
spec = importlib.util.find_spec("kernels")
out = {"origin": spec.origin if spec else None,
       "locations": list(spec.submodule_search_locations or []) if spec else []}
from transformers.activations import ACT2FN
out["act2fn"] = "gelu" in ACT2FN
print(json.dumps(out))
"""


def test_kernels_hub_and_transformers_import_from_the_repo_root():
    """From the repo root, `kernels` is the hub's package and transformers' activations import."""
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed (extra 'model')")
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels package is not installed (requirements/lock.txt has it)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # `python -c` in the repo root puts the root first on sys.path, as `python -m solar.cli` does
    run = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    places = [p for p in [out["origin"], *out["locations"]] if p]
    assert places, "kernels did not resolve at all"
    for p in places:
        assert ROOT not in Path(p).resolve().parents, f"`import kernels` resolves inside the repo: {p}"
    assert out["act2fn"]
