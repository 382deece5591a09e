"""The presets say what they promise: the lab preset is the course's recipe, the default is not."""

from __future__ import annotations

import datetime as dt

import pytest

from tasks.presets import ModelConfig, preset


def test_lab_preset_is_the_course_recipe() -> None:
    lab = preset("lab")
    assert (lab.features, lab.hidden, lab.embedding_dim) == ("lab", (256, 128), 32)
    assert (lab.learning_rate, lab.batch_size, lab.max_epochs, lab.patience) == (0.01, 32, 30, None)
    assert (lab.softmax_weight, lab.dropout, lab.leave_one_out, lab.history_length) == (
        0.0,
        0.0,
        False,
        0,
    )
    assert (lab.normalize, lab.target_scale) == (True, "minmax")


def test_default_keeps_the_architecture_and_changes_the_recipe() -> None:
    default = preset("default")
    assert (default.hidden, default.embedding_dim, default.normalize, default.target_scale) == (
        (256, 128),
        32,
        True,
        "minmax",
    )
    assert (
        default.features == "confidence"
        and default.leave_one_out
        and default.softmax_weight > 0
        and default.logq_correction
    )


def test_overrides_and_round_trip() -> None:
    config = preset("default", mse_weight=45.0, max_epochs=None)
    # None is ignored
    assert config.mse_weight == 45.0 and config.max_epochs == preset("default").max_epochs
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown preset 'course'"):
        preset("course")
    with pytest.raises(ValueError, match=r"unknown model config keys \['epochs'\]"):
        ModelConfig.from_dict({**config.to_dict(), "epochs": 3})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"shrinkage": 0.0}, "shrinkage must be > 0, got 0.0"),
        ({"temperature": -0.1}, "temperature must be > 0, got -0.1"),
        ({"max_epochs": 0}, "max_epochs must be > 0, got 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_values_are_refused_by_name(override: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preset("default", **override)


def test_run_options_come_from_the_flow_parameters() -> None:
    """One definition: the options' defaults are the parameters' defaults, and every option reaches
    its parameter.
    """
    import argparse

    from flows.params import NightlyParams, add_arguments, from_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_arguments(parser.parse_args([])) == NightlyParams()
    argv = [
        "--ratings",
        "a.csv",
        "--ratings",
        "b.csv",
        "--movies",
        "m.csv",
        "--data-dir",
        "d",
        "--run-date",
        "2026-03-04",
    ]
    argv += [
        "--k",
        "7",
        "--preset",
        "lab",
        "--seed",
        "3",
        "--max-epochs",
        "2",
        "--warm-start",
        "--warm-epochs",
        "1",
    ]
    argv += [
        "--early-stopping",
        "4",
        "--threads",
        "1",
        "--no-gate",
        "--gate-margin",
        "0.02",
        "--max-reject-share",
        "0.5",
    ]
    argv += ["--shard-size", "9", "--factors", "0", "--no-loss-choice"]
    got = from_arguments(parser.parse_args(argv))
    assert got.model_dump() == {
        **NightlyParams().model_dump(), "ratings": ["a.csv", "b.csv"], "movies": "m.csv",
        "data_dir": "d", "run_date": dt.date(2026, 3, 4), "k": 7, "preset": "lab", "seed": 3,
        "max_epochs": 2, "warm_start": True, "warm_epochs": 1, "patience": 4, "threads": 1,
        "gate": False, "gate_margin": 0.02, "max_reject_share": 0.5, "shard_size": 9, "factors": 0,
        "loss_choice": False,
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown preset 'fancy'"):
        NightlyParams(preset="fancy")


def test_a_bad_run_option_is_one_line_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    assert main(["run", "--k", "0", "--gate-margin", "-1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("towerflow run failed: --k 0: Input should be greater than or equal to 1")
        and "--gate-margin -1.0" in last
    )
