"""The `vlm-vision` dispatcher: every listed subcommand exists and wires up."""

import argparse
import importlib

import pytest

from vlm_vision import cli


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
