"""The `vlm-vision` dispatcher: every listed subcommand exists and wires up."""

import argparse
import importlib

import pytest

from vlm_vision.commands import main as cli
@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_every_subcommand_module_has_arguments_and_run(name):
    module = importlib.import_module(cli.SUBCOMMANDS[name][0])
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    assert callable(module.run)
    assert parser.format_help()


def test_help_lists_the_subcommands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.SUBCOMMANDS)


def test_unknown_command_is_an_error_naming_the_choices(capsys):
    assert cli.main(["encode"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'encode'" in err and "extract" in err


def test_version_is_the_installed_package_version(capsys):
    from importlib.metadata import version

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vlm-vision {version('vlm-vision')}"


def test_input_error_is_one_line_and_exit_2(monkeypatch, capsys):
    from vlm_vision.errors import InputError

    class Failing:
        @staticmethod
        def add_arguments(parser):
            parser.add_argument("path")

        @staticmethod
        def run(args):
            raise InputError("not a JSON file", args.path, "a JSON list of records", hint="convert it first")

    monkeypatch.setitem(cli.SUBCOMMANDS, "failing", ("failing_module", "fails"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: Failing)
    assert cli.main(["failing", "data.txt"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "vlm-vision failing: not a JSON file (data.txt): a JSON list of records"
    assert "convert it first" in err and "Traceback" not in err
    assert cli.main(["failing", "data.txt", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    class Broken:
        @staticmethod
        def add_arguments(parser):
            pass

        @staticmethod
        def run(args):
            raise ZeroDivisionError("a bug")

    monkeypatch.setitem(cli.SUBCOMMANDS, "broken", ("broken_module", "breaks"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: Broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(["broken"])


def test_ctrl_c_is_exit_130_and_one_line_with_how_to_resume(monkeypatch, capsys):
    class Interrupted:
        RESUME_HINT = "run the same command again to continue"

        @staticmethod
        def add_arguments(parser):
            pass

        @staticmethod
        def run(args):
            raise KeyboardInterrupt

    monkeypatch.setitem(cli.SUBCOMMANDS, "slow", ("slow_module", "takes long"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: Interrupted)
    assert cli.main(["slow"]) == 130
    assert capsys.readouterr().err == "vlm-vision slow: interrupted; run the same command again to continue\n"
