"""The serving half of the nightly job: export and publish (recommend and similar movies:
:mod:`tasks.serving.shards`).

Everything is built in the run's staging directory; :func:`run_publish`
moves the model directory and the tables into place and writes
``outputs/latest.json`` last, atomically. Until that rename, readers keep
seeing the previous run.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tasks import faults
from tasks.preparation.phases import prepare
from tasks.serving.export import (
    build_index,
    embed_all,
    write_embeddings,
    write_id_table,
    write_index,
)
from tasks.serving.popularity import ServingSpace, movie_popularity
from tasks.stage_results import Exported
from tasks.store import mirror, resume, schemas
from tasks.store.latest import Latest
from tasks.store.layout import MODEL_FILES, Layout
from tasks.store.remote import ObjectStore
from tasks.store.storage import sha256_file
from tasks.store.tables import load_ratings


def run_export(
    model_path: Path,
    full_dir: Path,
    scalers_path: Path,
    model_dir: Path,
    ratings_path: Path,
    prior_weight: float = 0.0,
) -> Exported:
    """Embed every user and catalog movie with the final model; write the served vectors, index, ids
    and tables.

    The served vectors carry the popularity prior with weight ``prior_weight``
    (:mod:`tasks.serving.popularity`), popularity counted on every rating; ``serving.json`` records
    how to read them back.
    """
    from tasks.modeling.model import load_model

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(Path(full_dir), Path(scalers_path))
    user_emb, movie_emb = embed_all(
        load_model(Path(model_path)), prepared.user_input, prepared.movie_x
    )
    space = ServingSpace(movie_emb.shape[1], prior_weight)
    movie_vecs = space.movies(
        movie_emb, movie_popularity(load_ratings(Path(ratings_path)), prepared.feats.movie_ids)
    )
    user_vecs = space.users(user_emb)
    space.write(model_dir / MODEL_FILES["serving"])
    write_index(build_index(movie_vecs), model_dir / MODEL_FILES["index"])
    write_id_table(model_dir / MODEL_FILES["index_ids"], prepared.feats.movie_ids)
    write_embeddings(
        model_dir / MODEL_FILES["movie_embeddings"], prepared.feats.movie_ids, movie_vecs, "movie"
    )
    write_embeddings(
        model_dir / MODEL_FILES["user_embeddings"], prepared.feats.user_ids, user_vecs, "user"
    )
    shutil.copyfile(model_path, model_dir / MODEL_FILES["keras"])
    for name in ("user_features.parquet", "movie_features.parquet"):
        shutil.copyfile(Path(full_dir) / name, model_dir / name)
    shutil.copyfile(scalers_path, model_dir / MODEL_FILES["scalers"])
    return Exported(
        model_dir=str(model_dir),
        users=len(user_vecs),
        movies=len(movie_vecs),
        dim=space.dim,
        prior_weight=prior_weight,
    )


def _replace_dir(src: Path, dest: Path) -> None:
    """Move directory ``src`` to ``dest``; an existing ``dest`` is swapped out, then removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    trash = None
    if dest.exists():
        trash = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, trash)
    os.replace(src, dest)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def run_publish(
    layout: Layout,
    run_date: dt.date,
    model_version: str,
    staged_model_dir: Path,
    staged_tables: dict[str, str | list[str]],
    extra: dict[str, Any],
    store: ObjectStore | None = None,
    expect_etag: str | None = None,
) -> Latest:
    """Move the model and tables into place, then write ``latest.json`` (:class:`Latest`) last,
    atomically.

    A table staged as one file is published as ``part-<version>.parquet``; a table staged as a
    list of shard files as ``part-<version>-NNNNN.parquet``, in list order. ``latest.json`` names
    each table's partition directory (``path``), its part files (``files``) and its row count.

    Crash safety (:mod:`tasks.store.resume`): a journal in the work directory names what is about to
    be put in place; table parts wait under hidden names beside their partition and become visible
    by renames just before ``latest.json``; a run killed before ``latest.json`` is rolled back by
    the next run. A model version that is already published and intact is left as it is: the files
    ``latest.json`` points to are never rewritten.

    With ``store`` (``s3://...``) the data directory is the night's local scratch: the files go to
    the store under their keys and ``latest.json`` with a conditional PUT on ``expect_etag`` (the
    ETag
    :func:`tasks.store.mirror.pull` read when the night started) before the scratch's own
    latest.json.
    """
    live = resume.live_latest(layout)
    if (
        live is not None
        and live.model_version == model_version
        and resume.published_intact(layout, live)
    ):
        # this very version is published and intact: never rewrite a file latest.json points to
        return live
    core = {
        "run_date": run_date.isoformat(),
        "model_version": model_version,
        "schema_version": schemas.SCHEMA_VERSION,
    }
    core |= {"published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    # before anything moves
    Latest.parse(
        {**core, "tables": {}, "model": {}, **extra}, f"the latest.json of {model_version}"
    )
    model_dir = layout.model(model_version)
    work = Path(staged_model_dir).parent
    shutil.copyfile(
        layout.store(extra["inputs"]["sha256"]) / "movies.parquet",
        Path(staged_model_dir) / MODEL_FILES["movies"],
    )
    resume.write_journal(
        work,
        model_version,
        run_date,
        {n: None if isinstance(t, str) else len(t) for n, t in staged_tables.items()},
    )
    _replace_dir(Path(staged_model_dir), model_dir)
    faults.point("publish:model-moved")
    published: dict[str, list[Path]] = {}
    for (
        name,
        staged,
    ) in staged_tables.items():  # beside their partitions first, under hidden names readers skip
        parts = [staged] if isinstance(staged, str) else list(staged)
        finals = [
            layout.table(name, run_date, model_version, None if isinstance(staged, str) else i)
            for i in range(len(parts))
        ]
        for src, final in zip(parts, finals, strict=True):
            final.parent.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, resume.staged_name(final))
        published[name] = finals
    faults.point("publish:tables-staged")
    for finals in published.values():  # renames only: latest.json follows at once
        for final in finals:
            final.parent.mkdir(exist_ok=True)
            os.replace(resume.staged_name(final), final)
    faults.point("publish:tables-visible")
    tables: dict[str, Any] = {}
    for name, finals in published.items():
        tables[name] = {
            "path": str(layout.partition(name, run_date).relative_to(layout.data_dir)),
            "files": [str(final.relative_to(layout.data_dir)) for final in finals],
            "rows": sum(pq.ParquetFile(final).metadata.num_rows for final in finals),
        }
    model = {
        key: {
            "path": str((model_dir / name).relative_to(layout.data_dir)),
            "sha256": sha256_file(model_dir / name),
        }
        for key, name in MODEL_FILES.items()
    }
    latest = Latest.parse(
        {**core, "tables": tables, "model": model, **extra}, f"the latest.json of {model_version}"
    )
    if store is not None:
        mirror.push_publish(store, layout, latest, expect_etag)
    latest.write(layout.latest)
    faults.point("publish:committed")
    for (
        name,
        finals,
    ) in published.items():  # older runs' parts of the same partitions are no longer pointed to
        for other in layout.partition(name, run_date).glob("part-*.parquet"):
            if other not in finals:
                other.unlink(missing_ok=True)
    resume.clear_journal(work)
    resume.prune_work(layout, run_date, keep=work)
    return latest
