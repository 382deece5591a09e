"""``towerflow recommend``, ``towerflow similar`` and ``towerflow download``.

The query commands are thin wrappers over the library (:func:`towerflow.load`): they ask the
published run (``outputs/latest.json``) and print a readable table, or ``--format json|csv`` for
scripts; they never retrain, and only a newcomer's answer (``--genres``, ``--rated``) imports
TensorFlow. Errors raise with a message naming the bad value; ``flows.cli.main`` turns that into one
line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

# pandas is imported only by the commands that print tables, keeping `towerflow --help` fast
if TYPE_CHECKING:
    import pandas as pd

MAX_AMBIGUOUS = 25
# column -> (header, format, max width); text columns are left-aligned, numbers right-aligned
_COLUMNS: dict[str, tuple[str, str, int]] = {
    "rank": ("rank", "{}", 4),
    "movie_id": ("movie", "{}", 9),
    "similar_movie_id": ("movie", "{}", 9),
    "title": ("title", "{}", 48),
    "genres": ("genres", "{}", 34),
    "score": ("score", "{:.3f}", 6),
    "predicted_rating": ("predicted", "{:.2f}", 9),
}


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--k must be a positive integer, got {value!r}")
    return n


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=_positive, help="how many (default: as many as the run published)")
    p.add_argument("--exclude", metavar="IDS", help="movie ids never to show, comma-separated")
    p.add_argument(
        "--only-genres",
        metavar="GENRES",
        help="only movies of at least one of these genres, comma-separated",
    )
    p.add_argument(
        "--years",
        metavar="FIRST-LAST",
        help="only movies released in these years: FIRST-LAST, FIRST- or -LAST",
    )
    p.add_argument(
        "--data-dir",
        default="data",
        help="where `towerflow run` published: a directory or s3://bucket/prefix",
    )
    p.add_argument(
        "--format",
        choices=["table", "json", "csv"],
        default="table",
        help="table (default) for people; json or csv for scripts",
    )


def add_parsers(sub: Any) -> None:
    """Register the query and download subcommands on ``towerflow``'s subparsers."""
    rec = sub.add_parser(
        "recommend", help="a user's published top-k with titles, genres, score and predicted rating"
    )
    # one way to say who is asking; cold start by genres can join here
    who = rec.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--user", type=int, metavar="ID", help="a MovieLens userId from the published run"
    )
    who.add_argument(
        "--genres",
        metavar="TASTES",
        help='cold start for a newcomer: stated tastes, e.g. "Adventure=5,Fantasy=4"',
    )
    who.add_argument(
        "--rated",
        metavar="RATINGS",
        help=(
            'someone the night did not see, by their ratings: "MOVIE=STARS,...", e.g. "1=5,260=4.5"'
        ),
    )
    _common(rec)
    sim = sub.add_parser(
        "similar", help="the movies nearest to a movie in the published embedding space"
    )
    sim.add_argument(
        "--movie",
        required=True,
        metavar="ID_OR_TITLE",
        help="a movieId, or part of a title (case-insensitive)",
    )
    _common(sim)
    dl = sub.add_parser(
        "download",
        help="fetch a MovieLens data set from GroupLens, verify its checksum and unpack it",
    )
    dl.add_argument(
        "dataset", choices=["ml-latest-small", "ml-25m", "ml-32m"], help="which MovieLens release"
    )
    dl.add_argument(
        "--to",
        type=Path,
        default=Path("."),
        help="directory to unpack into (default: the current directory)",
    )


def _fit_title(title: str, width: int) -> str:
    """Cut a long title in the middle so its year stays: ``The Good, the Bad and… (1966)``."""
    if len(title) <= width:
        return title
    year = (
        title[-7:]
        if len(title) > 7
        and title[-7:-5] == " ("
        and title[-5:-1].isdigit()
        and title.endswith(")")
        else ""
    )
    return title[: width - len(year) - 1].rstrip(" ,:(") + "…" + year


def _fit_genres(genres: str, width: int) -> str:
    """Whole genre names that fit, then how many more: ``Adventure, Animation, Children +2``."""
    names = [g for g in genres.split("|") if g]
    shown: list[str] = []
    for i, name in enumerate(names):
        rest = len(names) - i - 1
        candidate = ", ".join([*shown, name]) + (f" +{rest}" if rest else "")
        if len(candidate) > width and shown:
            return ", ".join(shown) + f" +{len(names) - len(shown)}"
        shown.append(name)
    return ", ".join(shown)


def _cell(value: Any, fmt: str, width: int, column: str) -> str:
    if value is None or (isinstance(value, float) and value != value):  # NaN
        return ""
    text = fmt.format(value)
    if column == "title":
        return _fit_title(text, width)
    if column == "genres":
        return _fit_genres(text, width)
    return text


def format_table(frame: pd.DataFrame, columns: list[str]) -> str:
    """An aligned plain-text table; long titles are cut before their year, long genre lists
    counted.
    """
    import pandas as pd

    numeric = {c for c in columns if pd.api.types.is_numeric_dtype(frame[c])}
    cells = [
        [_cell(v, _COLUMNS[c][1], _COLUMNS[c][2], c) for v in frame[c].tolist()] for c in columns
    ]
    headers = [_COLUMNS[c][0] for c in columns]
    widths = [max([len(h), *map(len, col)]) for h, col in zip(headers, cells, strict=True)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if c in numeric else v.ljust(w)
            for v, w, c in zip(values, widths, columns, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rows = [line(headers)] + [line([col[i] for col in cells]) for i in range(len(frame))]
    return "\n".join(rows)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain JSON-able dicts; floats rounded to 6 decimals (they are float32)."""
    return [
        {str(k): round(v, 6) if isinstance(v, float) else v for k, v in row.items()}
        for row in frame.astype(object).to_dict(orient="records")
    ]


def emit(frame: pd.DataFrame, fmt: str, headline: str, table_columns: list[str]) -> None:
    """Print ``frame``: a headline and an aligned table, or every column as JSON records or CSV."""
    if fmt == "json":
        print(json.dumps(_records(frame), indent=2, ensure_ascii=False))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(frame.columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(_records(frame))
    else:
        print(headline)
        print(format_table(frame, table_columns))


def _rules(args: argparse.Namespace) -> dict[str, Any]:
    """The business rules of a query command's options, as keyword arguments of the library's
    calls.
    """
    from tasks.serving.rules import parse_years

    exclude = [x for x in (args.exclude or "").split(",") if x.strip()] if args.exclude else None
    years = parse_years(args.years) if args.years else None
    return {"exclude": exclude, "genres": args.only_genres, "years": years}


def parse_rated(spec: str) -> dict[int, float]:
    """``"1=5,260=4.5"`` as {movie_id: stars}; the error names the part that is not MOVIE=STARS."""
    from towerflow import QueryError

    ratings: dict[int, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        movie, sep, stars = part.partition("=")
        try:
            if not sep:
                raise ValueError
            ratings[int(movie)] = float(stars)
        except ValueError:
            raise QueryError(f"--rated: {part!r} is not MOVIE=STARS, e.g. '1=5,260=4.5'") from None
    if not ratings:
        raise QueryError("--rated: say at least one MOVIE=STARS, e.g. '1=5,260=4.5'")
    return ratings


def cmd_recommend(args: argparse.Namespace) -> int:
    import towerflow

    rec = towerflow.load(args.data_dir)
    k = args.k or rec.k or 10
    about = f"(model {rec.version}, published {rec.run_date})"
    if args.genres is not None:
        from towerflow.coldstart import parse_tastes

        tastes = parse_tastes(args.genres)
        frame = rec.recommend_for_genres(tastes, k, **_rules(args))
        said = ", ".join(f"{g}={v:g}" for g, v in tastes.items())
        headline = f"Top {len(frame)} for a newcomer who likes {said}  {about}"
    elif args.rated is not None:
        ratings = parse_rated(args.rated)
        frame = rec.recommend_for_ratings(ratings, k, **_rules(args))
        headline = f"Top {len(frame)} for someone who rated {len(ratings)} movies  {about}"
    else:
        frame = rec.recommend(args.user, k, **_rules(args))
        headline = f"Top {len(frame)} for user {args.user}  {about}"
    emit(
        frame,
        args.format,
        headline,
        ["rank", "movie_id", "title", "genres", "score", "predicted_rating"],
    )
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    import towerflow
    from towerflow.query import AmbiguousMovie, find_movie, movie_title

    rec = towerflow.load(args.data_dir)
    try:
        movie_id = find_movie(rec.published, args.movie)
    except AmbiguousMovie as exc:
        width = max(len(str(i)) for i, _ in exc.matches[:MAX_AMBIGUOUS])
        lines = [f"towerflow similar: {exc}:"]
        lines += [f"  {i:>{width}}  {title}" for i, title in exc.matches[:MAX_AMBIGUOUS]]
        if len(exc.matches) > MAX_AMBIGUOUS:
            lines.append(f"  ... and {len(exc.matches) - MAX_AMBIGUOUS} more; narrow the title")
        print("\n".join(lines), file=sys.stderr)
        return 1
    frame = rec.similar(movie_id, args.k or rec.k or 10, **_rules(args))
    title = movie_title(rec.published, movie_id)
    headline = (
        f"{len(frame)} movies like {title} [movie {movie_id}]  (model {rec.version}, published "
        f"{rec.run_date})"
    )
    emit(frame, args.format, headline, ["rank", "similar_movie_id", "title", "genres", "score"])
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from tasks.sources.download import download

    got = download(args.dataset, args.to, progress=sys.stderr)
    if got.downloaded or got.unpacked:
        print(
            f"{args.dataset}: MD5 {got.md5} verified ({got.verified_by}); unpacked to {got.folder}"
        )
    else:
        print(
            f"{args.dataset}: already in {got.folder} (MD5 {got.md5} verified when "
            "unpacked); nothing downloaded"
        )
    print(f"next: {got.run_command()}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "recommend": cmd_recommend,
    "similar": cmd_similar,
    "download": cmd_download,
}
