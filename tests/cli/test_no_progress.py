"""``--no-progress`` is on every command that draws progress bars, and turns them off."""

import pytest

from caloforge.cli import _subparser, build_parser, main

BARS = ["simulate", "convert", "merge", "info", "generate", "evaluate", "train", "quickstart"]


@pytest.mark.parametrize("command", BARS)
def test_every_command_with_bars_takes_no_progress(command):
    options = {a.dest for a in _subparser(build_parser(), command)._actions}
    assert "no_progress" in options


@pytest.mark.parametrize("command", ["info", "convert", "simulate"])
def test_no_progress_silences_the_bar(command, ecal_file, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CALOFORGE_NO_PROGRESS", raising=False)  # bars on by default
    args = {"info": ["info", str(ecal_file)],
            "convert": ["convert", str(ecal_file), "OUT", "--to", "ild"],
            "simulate": ["simulate", "--detector", "ild-ecal", "--particle", "photon",
                         "--energy", "10", "-n", "3", "-o", "OUT"]}[command]
    for flag, out in (([], tmp_path / "a.h5"), (["--no-progress"], tmp_path / "b.h5")):
        argv = [str(out) if a == "OUT" else a for a in args] + flag
        assert main(argv) == 0
        err = capsys.readouterr().err
        assert ("%|" in err) == (not flag), (argv, err[-300:])
