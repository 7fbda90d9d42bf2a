"""Usage errors from the command line read like every other error: one `error:` line, exit 2."""

from __future__ import annotations

import sys

import pytest

from more_cli.cli.app import main

CASES = [
    (["merge", "RUN", "--dtype", "float16"], "invalid value for '--dtype'", "more merge --help"),
    (["train", "R.yaml", "--num-processes", "0"], "'--num-processes'", "more train --help"),
    (["predict", "RUN", "-i", "x", "--batch-size", "0"], "'--batch-size'", "more predict"),
    (["inspect", "RUN", "--format", "jpg"], "invalid value for '--format'", "more inspect"),
    (["eval"], "missing argument", "more eval --help"),
    (["nosuch"], "no such command 'nosuch'", "more --help"),
    (["eval", "RUN", "--no-such-option"], "no such option", "more eval --help"),
]


@pytest.mark.parametrize(("argv", "problem", "hint"), CASES)
def test_a_usage_error_is_one_error_line_with_exit_2(
    argv: list[str], problem: str, hint: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["more", *argv])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert problem in lines[0] and hint in lines[0]
    assert "Traceback" not in captured.err + captured.out and "Usage:" not in captured.err


def test_help_still_exits_0(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["more", "eval", "--help"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 0 and "Usage" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "eval", "predict", "merge", "inspect", "tasks"])
def test_help_shows_flags_without_a_type_and_a_readable_usage_line(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["more", command, "--help"])
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main()
    out = capsys.readouterr().out
    assert "<bool>" not in out and "{" not in out.split("\n\n", 2)[1]
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert f"more {command} [OPTIONS]" in usage
