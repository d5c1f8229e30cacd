"""Options generated from config dataclasses: defaults, help from field comments, aliases, round trip."""

import argparse
from dataclasses import dataclass

import pytest

from gradmem.cli.options import add_options, field_comments, float_list, from_args, int_list
from gradmem.serve.budget import Budget


@dataclass
class Demo:
    steps: int = 3  # how many steps
    rate: float = 0.5  # per second
    name: str | None = None  # optional label
    loud: bool = False  # say more
    nested: Budget | None = None  # not a command-line value


def test_defaults_help_and_round_trip() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, Demo, aliases={"rate": "--r"})
    assert field_comments(Demo)["steps"] == "how many steps"
    assert "--nested" not in parser.format_help()
    assert "how many steps" in parser.format_help()
    assert from_args(Demo, parser.parse_args([])) == Demo()
    got = from_args(Demo, parser.parse_args(["--steps", "7", "--r", "2", "--name", "x", "--loud"]))
    assert got == Demo(steps=7, rate=2.0, name="x", loud=True)
    assert from_args(Demo, parser.parse_args(["--steps", "7"]), steps=9).steps == 9


def test_budget_flags_match_the_dataclass() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, Budget)
    assert from_args(Budget, parser.parse_args([])) == Budget()
    assert from_args(Budget, parser.parse_args(["--max-write-steps", "5"])).max_write_steps == 5


def test_number_lists_parse_or_fail_as_a_usage_error(capsys) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int_list, default="4,8")
    parser.add_argument("--lrs", type=float_list, default=None)
    assert parser.parse_args([]).pairs == [4, 8]  # string defaults go through the type too
    assert parser.parse_args(["--pairs", "16", "--lrs", "0.1,1e-2"]).lrs == [0.1, 0.01]
    for bad in (["--pairs", "4,x"], ["--pairs", ""], ["--lrs", "0.1,,1"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(bad)
        assert exit_info.value.code == 2
        assert "expected comma-separated" in capsys.readouterr().err
