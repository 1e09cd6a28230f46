"""pytest wiring of the microbenchmarks: collects bench_*.py, picks the size preset, turns
pytest-benchmark's timing on (the project's addopts disable it for the test suite) and writes the
results files at the end of the session."""
from __future__ import annotations

import os

import pytest

import _harness as H


def pytest_addoption(parser):
    parser.addoption("--preset", default=None, choices=H.PRESETS,
                     help="benchmark sizes: tiny (default, CPU smoke), cpu, gpu "
                          "(or SOLAR_BENCH_PRESET)")


def pytest_configure(config):
    os.environ["SOLAR_BENCH_PRESET"] = H.preset_name(config)
    if os.environ.get("SOLAR_BENCH_DISABLE") != "1":
        config.option.benchmark_enable = True


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture
def preset() -> H.Preset:
    return H.current_preset()


def pytest_sessionfinish(session, exitstatus):
    path = H.write_results(os.environ.get("SOLAR_BENCH_PRESET", "tiny"))
    if path is not None:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"solar bench results: {path} (and .json)")
