import json

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
