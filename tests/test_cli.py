"""The command line as a whole: every command's help renders what its source says."""
import re

import click
import typer.main
from typer.testing import CliRunner

from cli import app


def _commands(command: click.Command, path: tuple[str, ...] = ()):
    """Every (path, command) below ``command``, groups included."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_texts_hold_nothing_that_markdown_would_swallow():
    """Help is rendered as markdown (paragraphs reflow): a <placeholder> would vanish as an HTML tag."""
    offending = []
    for path, command in _commands(typer.main.get_command(app)):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        offending += [(" ".join(path), t) for t in texts if re.search(r"<[A-Za-z]", t)]
    assert not offending, offending


def test_every_command_answers_help():
    runner = CliRunner()
    for path, _ in _commands(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
