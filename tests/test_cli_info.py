import importlib
import json
import subprocess
import sys

from click.testing import CliRunner

from solar.cli import main


def test_info_reports_versions_and_backends():
    res = CliRunner().invoke(main, ["info", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["torch"] and data["solar"]
    assert set(data["backends"]) == {"cuda", "triton", "cpu", "torch"}
    assert data["backends"]["torch"]["runs_here"] is True
    human = CliRunner().invoke(main, ["info"])
    assert human.exit_code == 0 and "backends:" in human.output


def test_unknown_command_is_an_error():
    res = CliRunner().invoke(main, ["frobnicate"])
    assert res.exit_code != 0 and "No such command" in res.output


def test_help_lists_commands_without_importing_them():
    """`solar-index --help` loads no torch: the lazy commands' help comes from a table."""
    code = ("import sys; sys.argv = ['solar-index', '--help']\n"
            "from solar.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'solar.ops', 'solar.train', 'solar_milvus.cli') "
            "if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout, out.stdout
    for name in ("train", "eval", "ingest", "search", "demo", "info"):
        assert f"  {name} " in out.stdout


def test_help_table_matches_the_commands():
    """The static help of each lazy command is the first paragraph of its own help."""
    from solar import cli
    for name, (module, attr, text) in cli._COMMANDS.items():
        if not cli._present(module):
            continue
        cmd = getattr(importlib.import_module(module), attr)
        first = cmd.help.split("\n\n")[0]
        assert " ".join(text.split()) == " ".join(first.split()), name
