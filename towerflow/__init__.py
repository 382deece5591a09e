"""towerflow as a library: ask the published nightly model from Python.

    import towerflow

    rec = towerflow.load("data")                       # the run outputs/latest.json points to
    rec.recommend(1, k=10, genres=["Comedy"])          # a known user's top 10 comedies
    rec.recommend_for_ratings({1: 5.0, 260: 4.5})      # a user the night did not see, folded in
    rec.similar(1, k=5, years=(1990, None))            # movies like Toy Story, from 1990 on
    rec.predict([(1, 50), (2, 318)])                   # predicted stars

The nightly job lives in ``tasks/`` and ``flows/``; this package is the query-time side, and the
``towerflow recommend / similar / predict`` commands are thin wrappers over it. Every answer is a
pandas data frame; an error names the bad id, rating or rule (:class:`QueryError`).
"""

from tasks.serving.rules import Rules
from towerflow.query import AmbiguousMovie, QueryError
from towerflow.recommender import Recommender, load

__all__ = ["AmbiguousMovie", "QueryError", "Recommender", "Rules", "load"]
