"""droplab.config: options declared once — validation, nesting, config.json in both layouts,
dotted updates and the comparison the resume rule makes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest

from droplab.config import Config, differences, flatten, leaves, option, section
from droplab.engine.classifier import ClassifyConfig
from droplab.engine.config import TrainConfig, parse_classes
from droplab.errors import InvalidValue, UnknownName, UserError


@dataclass
class Inner(Config):
    rate: float = option(0.1, rate=True, help="a drop probability")
    widths: tuple[int, ...] = option((4, 8), ge=1, help="sizes")
    kind: str = option("a", choices=("a", "b"), what="kind", help="a or b")


@dataclass
class Outer(Config):
    inner: Inner = section(lambda: Inner(rate=0.3), title="inner part")
    lr: float | None = option(None, gt=0, help="learning rate")
    steps: int = option(3, ge=1, le=10, help="steps")
    where: str | None = option(None, runtime=True, flag="--out", help="folder")
    flag: bool | None = option(None, help="on, off or auto")

    def validate(self) -> None:
        if self.lr is not None and self.steps > 5 and self.lr > 1:
            raise InvalidValue("--lr above 1 needs --steps <= 5")


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("kw, text", [
    ({"lr": float("nan")}, "--lr must be a finite number, got nan"),
    ({"lr": float("inf")}, "--lr must be a finite number, got inf"),
    ({"lr": 0.0}, "--lr must be positive, got 0"),
    ({"lr": "abc"}, "--lr takes a number, got 'abc'"),
    ({"steps": 0}, "--steps must be in [1, 10], got 0"),
    ({"steps": 11}, "--steps must be in [1, 10], got 11"),
    ({"steps": 2.5}, "--steps takes an integer, got 2.5"),
    ({"steps": True}, "--steps takes an integer"),
    ({"lr": 2.0, "steps": 6}, "--lr above 1 needs --steps <= 5"),
])
def test_leaf_checks_name_the_option(kw: dict, text: str) -> None:
    with pytest.raises(InvalidValue) as exc:
        Outer(**kw)
    assert text in one_line(exc)


def test_section_checks_rates_choices_and_list_elements() -> None:
    with pytest.raises(InvalidValue, match=r"--rate=1 is outside \[0, 1\)"):
        Inner(rate=1.0)
    with pytest.raises(InvalidValue, match="outside"):
        Inner(rate=float("nan"))  # NaN is not in [0, 1) either
    with pytest.raises(UnknownName, match="unknown kind 'c'; choose one of: a, b"):
        Inner(kind="c")
    with pytest.raises(InvalidValue, match="--widths must be at least 1, got 4 0"):
        Inner(widths=(4, 0))
    assert Inner(widths=[2, "3"]).widths == (2, 3)  # JSON lists and texts become the type


def test_values_are_coerced_to_the_annotation() -> None:
    o = Outer(steps="4", lr="0.5", flag="off")
    assert (o.steps, o.lr, o.flag) == (4, 0.5, False)
    assert Outer(flag="auto").flag is None and Outer(flag="on").flag is True
    assert Outer(steps=4.0).steps == 4  # 4.0 from JSON is the integer 4


def test_to_dict_from_dict_round_trip_through_json() -> None:
    o = Outer(inner=Inner(rate=0.2, widths=(1, 2, 3), kind="b"), lr=0.1, steps=2, where="x")
    again = Outer.from_dict(json.loads(json.dumps(o.to_dict())))
    assert again == o and isinstance(again.inner.widths, tuple)


def test_from_dict_reads_flat_files_and_section_defaults() -> None:
    # a flat file (release 0.1 layout): each key goes to the section owning that option
    flat = {"task": "x", "rate": 0.25, "widths": [16], "lr": 0.01, "unknown": 1}
    o = Outer.from_dict(flat)
    assert o.inner == Inner(rate=0.25, widths=(16,)) and o.lr == 0.01
    # sections start from the command's own defaults, not the class defaults
    assert Outer.from_dict({}).inner.rate == 0.3 and Inner().rate == 0.1
    assert flatten(o.to_dict()) == {"rate": 0.25, "widths": [16], "kind": "a", "lr": 0.01,
                                    "steps": 3, "where": None, "flag": None}


def test_build_takes_flat_names_and_refuses_typos() -> None:
    o = Outer.build(rate=0.4, out="runs/a", steps=5)
    assert o.inner.rate == 0.4 and o.where == "runs/a"  # the flag's name works too
    with pytest.raises(TypeError, match="'stpes'"):
        Outer.build(stpes=5)


def test_updated_by_dotted_path_is_validated_and_leaves_the_original() -> None:
    o = Outer()
    p = o.updated({"inner.rate": 0.5, "steps": 7})
    assert (p.inner.rate, p.steps) == (0.5, 7) and (o.inner.rate, o.steps) == (0.3, 3)
    with pytest.raises(InvalidValue, match="--rate"):
        o.updated({"inner.rate": 1.5})


def test_differences_skip_runtime_options() -> None:
    a = Outer()
    b = a.updated({"where": "elsewhere", "inner.kind": "b", "steps": 4})
    assert differences(a, b) == ["inner.kind", "steps"]
    assert differences(a, b, include_runtime=True) == ["inner.kind", "steps", "where"]
    assert differences(a, Outer.from_dict(a.to_dict())) == []


def test_leaves_carry_paths_flags_and_command_defaults() -> None:
    by_path = {leaf.path: leaf for leaf in leaves(Outer)}
    assert list(by_path) == ["inner.rate", "inner.widths", "inner.kind", "lr", "steps",
                             "where", "flag"]
    assert by_path["inner.rate"].default == 0.3 and by_path["inner.rate"].section == "inner part"
    assert by_path["where"].flag == "--out" and by_path["where"].dest == "out"


def test_classify_config_sections_and_legacy_file() -> None:
    cfg = ClassifyConfig.build(dataset="digits", model="lenet", widths=[4, 8, 16], dropout=0.3,
                               epochs=2, lr=0.1, seed=4, out="runs/x", augment=True)
    assert (cfg.data.dataset, cfg.model.name, cfg.model.widths) == ("digits", "lenet", (4, 8, 16))
    assert (cfg.train.epochs, cfg.run.seed, cfg.data.augment) == (2, 4, True)
    assert cfg.train.batch_size == 32 and TrainConfig().batch_size == 64  # classify's default
    # the flat config.json of release 0.1 (augment was "auto" | "on" | "off") reads the same
    legacy = {"task": "train", "dataset": "digits", "model": "lenet", "widths": [4, 8, 16],
              "dropout": 0.3, "epochs": 2, "lr": 0.1, "seed": 4, "out": "runs/x",
              "augment": "on", "download": True, "max_norm": None}
    assert ClassifyConfig.from_dict(legacy) == cfg
    assert ClassifyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ClassifyConfig.from_dict({**legacy, "augment": "auto"}).data.augment is None
    flags = [leaf.flag for leaf in leaves(ClassifyConfig, cli_only=True)]
    assert len(flags) == len(set(flags))  # one flag per option across the sections


def test_parse_classes_ranges_and_names() -> None:
    assert parse_classes("0-2,5") == ["0", "1", "2", "5"]
    assert parse_classes("cat, dog") == ["cat", "dog"]
    with pytest.raises(InvalidValue, match=r"--classes range '5-2' is reversed; write 2-5"):
        parse_classes("5-2")


def test_errors_are_user_errors() -> None:
    # every check raises a UserError subclass: the CLI prints it in one line, exit 2
    for bad in ({"lr": math.nan}, {"steps": -1}):
        with pytest.raises(UserError):
            Outer(**bad)
