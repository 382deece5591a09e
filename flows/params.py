"""The nightly flow's parameters: one pydantic model, shown in the Prefect UI and stored with
deployments.

It is also the one definition of the command line's run options: :func:`add_arguments` derives each
``towerflow run`` / ``serve`` option (name, type, default, help) from a field, and
:func:`from_arguments` maps them back, so a default or a description is written once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import types
import typing
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, JsonValue, ValidationError, field_validator

from tasks.errors import ConfigError
from tasks.presets import PRESETS

# the rules module loads pandas: imported where rules are used, keeping `towerflow --help` fast
if TYPE_CHECKING:
    from pydantic import ValidationInfo

    from tasks.serving.rules import Rules


class NightlyParams(BaseModel):
    """Parameters of one nightly run (shown in the Prefect UI)."""

    ratings: str | list[str] | None = Field(
        None,
        description=(
            "ratings.csv (or .parquet); several files or a drop folder: incremental "
            "(ledger); default: embedded"
        ),
    )
    movies: str | None = Field(
        None, description="movies.csv (or .parquet); default: the embedded data set"
    )
    data_dir: str = Field(
        "data",
        description="where the store, models and outputs live: a directory or s3://bucket/prefix",
    )
    scratch_dir: str | None = Field(
        None,
        description=(
            "with an s3:// data directory: the local working copy (staging, resume cache, "
            "the published run); default: $TOWERFLOW_SCRATCH or ~/.cache/towerflow, one per "
            "URI"
        ),
    )
    run_date: dt.date | None = Field(None, description="partition date; default: today")
    k: int = Field(
        10, ge=1, le=1000, description="recommendations per user and similar movies per movie"
    )
    preset: str = Field(
        "default",
        description="model preset; 'lab' reproduces the course, 'balanced' trades ranking for RMSE",
        # a drop-down in the UI; tasks.presets.PRESETS is the one list
        json_schema_extra={"enum": list[JsonValue](sorted(PRESETS))},
    )
    seed: int = Field(42, description="seed of every random choice in training")
    holdout_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=0.5,
        description=(
            "each user's most recent share of ratings held out to validate (0: no holdout, no gate)"
        ),
    )
    max_epochs: int | None = Field(None, ge=1, description="override the preset's epoch limit")
    loss_choice: bool = Field(
        True,
        description=(
            "train a validation model per MSE weight of the preset and keep the one the holdout "
            "scores best (tasks/evaluation/selection.py); off: the preset's first weight alone"
        ),
    )
    warm_start: bool = Field(
        False, description="start from the published model's weights (tasks/modeling/warmstart.py)"
    )
    warm_epochs: int | None = Field(
        None, ge=1, description="epochs of a warm start (default: a quarter of the preset's)"
    )
    patience: int | None = Field(
        None, ge=1, description="early stopping patience in epochs (default: the preset's)"
    )
    refit: Literal["full", "warm", "none"] | None = Field(
        None,
        description=(
            "'full': train again on every rating to publish; 'warm': go on from the "
            "validation model for a fifth of its epochs; 'none': publish the validation "
            "model (default: the preset's)"
        ),
    )
    factors: int | None = Field(
        None,
        ge=0,
        le=256,
        description="collaborative factors per movie (0: content only; default: the preset's)",
    )
    chunk_size: int = Field(4096, ge=1, description="users per top-k chunk (bounds memory)")
    shard_size: int = Field(
        50_000,
        ge=1,
        description="users (movies) per recommend (similar) task; shards run on the task runner",
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for TF, BLAS and FAISS; default: all cores"
    )
    gate: bool = Field(
        True,
        description=(
            "refuse to publish a model worse, with confidence, than most-popular or the "
            "published model"
        ),
    )
    gate_margin: float = Field(
        0.01,
        ge=0.0,
        description="allowed NDCG@k drop below the published model before the gate refuses",
    )
    max_reject_share: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description=(
            "fail the run if more than this share of the ratings rows is rejected (see rejects/)"
        ),
    )
    deny_list: str | None = Field(
        None,
        description=(
            "file of movie ids never recommended: one per line, or a CSV with a movieId column"
        ),
    )
    only_genres: str | None = Field(
        None,
        description=(
            "recommend only movies of at least one of these genres, comma-separated (e.g. "
            "'Comedy,Drama')"
        ),
    )
    years: str | None = Field(
        None,
        description="recommend only movies released in these years: FIRST-LAST, FIRST- or -LAST",
    )

    @field_validator("only_genres", "years", "deny_list")
    @classmethod
    def _rule(cls, value: str | None, info: ValidationInfo) -> str | None:
        from tasks.serving.rules import Rules, parse_years, read_deny_list

        if value is None:  # checked now, so a bad rule fails before the night starts
            return value
        if info.field_name == "only_genres":
            Rules.make(genres=value)
        elif info.field_name == "years":
            Rules.make(years=parse_years(value))
        else:
            read_deny_list(value)
        return value

    def rules(self) -> Rules:
        """The night's business rules (:class:`tasks.serving.rules.Rules`), the deny-list file read
        now.
        """
        from tasks.serving.rules import Rules, parse_years, read_deny_list

        deny = read_deny_list(self.deny_list) if self.deny_list else None
        years = parse_years(self.years) if self.years else None
        return Rules.make(deny=deny, genres=self.only_genres, years=years)

    @field_validator("data_dir", "ratings", "movies")
    @classmethod
    def _store_uri(cls, value: str | list[str] | None) -> str | list[str] | None:
        from tasks.store.remote import StoreURI, is_uri

        for item in [value] if isinstance(value, str) else value or []:
            if is_uri(item):
                StoreURI.parse(item)  # a bad URI fails before the night starts
        return value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; choose one of {sorted(PRESETS)}")
        return value


# The fields that are command-line options, with what argparse needs beyond the field itself (flag
# name when it is not --<field-name>, a metavar, choices); the rest (holdout_fraction, chunk_size)
# are flow parameters only.
_OPTIONS: dict[str, dict[str, Any]] = {
    "ratings": {"type": str, "action": "append", "metavar": "PATH"},
    "movies": {"type": str, "metavar": "PATH"},
    "data_dir": {"type": str, "metavar": "DIR"},
    "scratch_dir": {"type": str, "metavar": "DIR"},
    "run_date": {"metavar": "YYYY-MM-DD"},
    "k": {},
    "preset": {"choices": sorted(PRESETS)},
    "seed": {},
    "max_epochs": {},
    "loss_choice": {
        "flag": "--no-loss-choice",
        "help": "train one validation model, at the preset's MSE weight: a faster night, no choice",
    },
    "warm_start": {},
    "warm_epochs": {},
    "patience": {"flag": "--early-stopping", "metavar": "PATIENCE"},
    "refit": {"choices": ["full", "warm", "none"]},
    "factors": {"metavar": "K"},
    "threads": {},
    "gate": {
        "flag": "--no-gate",
        "help": "publish whatever the quality gate's verdict (the verdict is still recorded)",
    },
    "gate_margin": {},
    "max_reject_share": {},
    "shard_size": {},
    "deny_list": {"metavar": "PATH"},
    "only_genres": {"metavar": "GENRES"},
    "years": {"metavar": "FIRST-LAST"},
}


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--run-date must be YYYY-MM-DD, got {value!r}") from None


def _scalar(annotation: Any) -> Any:
    """The non-None type of ``X | None`` (``int | None`` -> int)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return (
        args[0]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1
        else annotation
    )


def add_arguments(parser: argparse.ArgumentParser, *, run_date: bool = True) -> None:
    """Add the run options to ``parser`` (``run_date``: False for ``serve``, whose runs take the day
    they run).
    """
    for name, extra in _OPTIONS.items():
        if name == "run_date" and not run_date:
            continue
        field = NightlyParams.model_fields[name]
        options = {k: v for k, v in extra.items() if k not in ("flag", "help")}
        flag = extra.get("flag", "--" + name.replace("_", "-"))
        kind = _scalar(field.annotation)
        default = field.default
        help_text = extra.get("help", field.description or "")
        options["dest"] = name
        if kind is bool:
            options["action"] = "store_false" if flag.startswith("--no-") else "store_true"
        else:
            options.setdefault(
                "type", _date if kind is dt.date else kind if kind in (int, float) else str
            )
            if default is not None and "default" not in help_text:
                help_text += f" (default: {default})"
        parser.add_argument(flag, help=help_text, **options)
    parser.set_defaults(
        **{name: NightlyParams.model_fields[name].default for name in _OPTIONS if name != "ratings"}
    )


def from_arguments(args: argparse.Namespace) -> NightlyParams:
    """The parameters of the options :func:`add_arguments` added (paths as text, one ratings file or
    several).
    """
    values = {name: getattr(args, name) for name in _OPTIONS if hasattr(args, name)}
    ratings = values.pop("ratings", None)
    if ratings:
        values["ratings"] = str(ratings[0]) if len(ratings) == 1 else [str(r) for r in ratings]
    for name in ("movies", "data_dir"):
        if values.get(name) is not None:
            values[name] = str(values[name])
    try:
        return NightlyParams(**values)
    except ValidationError as exc:  # a bad option is the user's to fix: one line that names it
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            flag = _OPTIONS.get(name, {}).get("flag", "--" + name.replace("_", "-"))
            problems.append(
                f"{flag} {error['input']!r}: {error['msg'].removeprefix('Value error, ')}"
            )
        raise ConfigError("; ".join(problems)) from None
