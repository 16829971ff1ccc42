"""Parsers generated from the configs: --help lists every option once, bad values are one
line naming the option (before any folder is made), --resume starts from config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from droplab.cli import build_parser, main
from droplab.cli.options import Command
from droplab.config import flatten, leaves

TINY = ["--dataset", "digits", "--limit", "20", "--model", "mlp", "--widths", "16",
        "--epochs", "1", "--device", "cpu"]


def commands() -> dict[str, Command]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = {}
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        func = p.get_default("func")
        if isinstance(func, Command):
            out[name] = func
    return out


def test_every_command_is_generated_from_its_config() -> None:
    """No command keeps a hand-written parser: each subcommand's --help and validation come
    from one droplab.config class (the CLI modules only declare Commands)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = set(sub.choices)  # type: ignore[arg-type]
    assert {"train", "evaluate", "finetune", "sweep", "gan", "stylize", "style-train",
            "style-apply", "report", "serve", "inspect", "active"} <= names
    assert names == set(commands()), names - set(commands())
    cli = Path(__file__).resolve().parents[1] / "src" / "droplab" / "cli"
    hand_written = [p.name for p in cli.glob("*.py")
                    if p.name not in ("__init__.py", "options.py", "common.py")
                    and "add_argument(" in p.read_text()]
    assert hand_written == []


def test_every_generated_command_lists_each_option_with_its_default(
        capsys: pytest.CaptureFixture[str]) -> None:
    found = commands()
    assert {"train", "evaluate"} <= set(found)
    for name, cmd in found.items():
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for leaf in leaves(cmd.config, cli_only=True):
            shown = leaf.option.metavar or leaf.name.upper()
            assert (leaf.flag if not leaf.option.positional else shown) in text, (name, leaf.path)
        assert "--json" in text and ("--resume" in text) == (cmd.task is not None)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS training epochs (default 10)" in text
    assert "--batch-size BATCH_SIZE global batch size (default 32)" in text  # classify's own
    assert "--augment, --no-augment" in text and "--optimizer {sgd,adamw}" in text


@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--lr", "-0.1"], "--lr must be positive, got -0.1"),
    (["--epochs", "abc"], "--epochs takes an integer, got 'abc'"),
    (["--classes", "5-2"], "--classes range '5-2' is reversed; write 2-5"),
    (["--dropout", "1.5"], "--dropout=1.5 is outside [0, 1)"),
    (["--val-fraction", "inf"], "--val-fraction must be a finite number, got inf"),
    (["--widths", "8,x"], "--widths takes integers like 512,256, got '8,x'"),
    (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'; choose one of: adamw, sgd"),
    (["--device", "tpu"], "--device must be one of auto, cpu, cuda, mps"),
    (["--bogus"], "unrecognized arguments: --bogus (see droplab train --help)"),
    (["--epochs"], "argument --epochs: expected one argument"),
])
def test_bad_values_are_one_line_before_any_folder(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   args: list[str], message: str) -> None:
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("droplab train: error: ") and message in err
    assert "parse_" not in err and "Traceback" not in err
    assert not out.exists()


def test_resume_reads_stored_config_and_legacy_flat_files(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    out = tmp_path / "r"
    assert main(["train", *TINY, "--seed", "3", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    stored = json.loads((out / "config.json").read_text())
    assert stored["run"]["seed"] == 3 and stored["model"]["widths"] == [16]
    # the same folder with a release-0.1 flat config.json resumes the same way
    flat = flatten(stored)
    flat["model"] = flat.pop("name")
    (out / "config.json").write_text(json.dumps(flat))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["train", "--out", str(out), "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary  # finished: nothing retrained
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # an option that changes the numbers is refused, naming both values; runtime ones pass
    assert main(["train", "--out", str(out), "--resume", "--seed", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seed (stored 3, given 4)" in err
    assert main(["train", "--out", str(out), "--resume", "--device", "cpu", "--json"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--device", "cpu", "--json"]) == 0  # reads it too
    assert json.loads(capsys.readouterr().out)["acc"] == pytest.approx(summary["test_acc"])


def test_resume_of_another_task_or_nothing(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "g"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"task": "gan"}))
    assert main(["train", "--out", str(other), "--resume"]) == 2
    assert "holds a 'gan' run, not a 'train' run" in capsys.readouterr().err
    assert main(["train", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
