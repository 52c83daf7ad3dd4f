"""K-Means for the knowledge tree's levels: scikit-learn's ``KMeans`` (Lloyd), seeded by its greedy
k-means++ on a seeded subsample, deterministic for the same inputs and seed (see :func:`kmeans`)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import sklearn
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

# part of a tree's version: another K-Means (or scikit-learn release) may cluster the same inputs otherwise
CLUSTERING_METHOD = f"scikit-learn {sklearn.__version__} KMeans (lloyd), k-means++ on a seeded subsample"

_SEED_DIMENSIONS = 64  # k-means++ seeding runs on a random projection to this many dimensions
_KMEANS_THREADS = 2  # OpenMP threads of scikit-learn's K-Means: at most 2 keeps it exact (see kmeans)
_THREADED_KMEANS_SIZE = 10_000_000  # n·k from which a second thread pays for its synchronisation


def cluster_sums(points: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per cluster j < k, the sum of the rows of ``points`` labelled j (k, D)."""
    one_hot = sp.csr_array((np.ones(len(labels), dtype=points.dtype), (labels, np.arange(len(labels)))), shape=(k, len(labels)))
    return np.asarray(one_hot @ points)


class _SubsampledKMeansPlusPlus:
    """scikit-learn's greedy k-means++ (``kmeans_plusplus``) on a seeded subsample of ``init_size`` rows, an
    ``init`` callable for :class:`~sklearn.cluster.KMeans`.

    Above 64 dimensions the seeding runs on a seeded Gaussian random projection to 64 dimensions, which
    preserves distances well enough for seeding and makes it 6× cheaper at 384 dimensions; Lloyd's
    iterations use the full vectors. KMeans passes the points centred on their mean (distances are
    unchanged).
    """

    def __init__(self, init_size: int | None):
        self.init_size = init_size

    def __call__(self, points: np.ndarray, k: int, random_state: np.random.RandomState) -> np.ndarray:
        n, dimensions = points.shape
        size = min(n, self.init_size or max(3 * k, 10_000))
        sample = np.sort(random_state.choice(n, size=size, replace=False)) if size < n else np.arange(n)
        candidates = points[sample]
        if dimensions > _SEED_DIMENSIONS:
            projection = random_state.standard_normal((dimensions, _SEED_DIMENSIONS)).astype(points.dtype)
            candidates = candidates @ projection
        # in float64: for float32 rows scikit-learn computes each distance block in a float64 copy, 2× slower
        _, seeds = kmeans_plusplus(candidates.astype(np.float64), k, random_state=random_state)
        return points[sample[seeds]]


def kmeans(
    points: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 20,
    tol: float = 1e-3,
    init_size: int | None = None,
    n_init: int | str = "auto",
) -> np.ndarray:
    """Labels (n,) of scikit-learn's Lloyd K-Means (min Σ‖x − c‖²) on unit-vector rows, seeded by greedy
    k-means++ on a seeded subsample.

    init_size: rows the seeding samples from (default min(n, max(3k, 10,000))).
    n_init: restarts, keeping the lowest inertia; "auto" = min(10, max(1, 3·10⁷ // (n·k))), i.e. 10 on
        small problems, where one unlucky seeding splits a tight cluster, and 1 at scale (50,000 tags
        into 5,000 leaves).
    max_iter, tol: each run stops after ``max_iter`` iterations, when no label changes, or when the
        total squared centre shift Σ‖Δc‖² is at most ``tol`` × the mean per-feature variance of the
        points (scikit-learn's rule).
    Empty clusters are re-seeded with far points (scikit-learn's rule). Clusters are numbered by their
    first member and clusters that stay empty (fewer distinct points than k) are dropped, so labels
    are 0 .. k'−1 with k' ≤ k. Deterministic for the same inputs and seed whatever the thread settings,
    on any machine with two cores or more: BLAS runs on one thread and scikit-learn's OpenMP loops on at
    most two (see below).
    """
    n = len(points)
    k = max(1, min(int(k), n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    if n_init == "auto":
        n_init = min(10, max(1, 30_000_000 // (n * k)))
    model = KMeans(
        n_clusters=k,
        init=_SubsampledKMeansPlusPlus(init_size),
        n_init=max(1, int(n_init)),
        max_iter=max(1, max_iter),
        tol=tol,
        random_state=seed,
        algorithm="lloyd",
    )
    # scikit-learn adds each thread's partial centre sums under a lock, in the order the threads finish:
    # with two threads that is one commutative addition, exact; with more, the rounding could vary.
    # Small problems run on one thread: there, waiting for the other thread costs more than it saves.
    # BLAS single-threaded: the seeding is k small products in a row, where thread hand-offs cost more
    # than they save (and scikit-learn's Lloyd iterations run BLAS single-threaded anyway).
    threads = {"openmp": _KMEANS_THREADS if n * k >= _THREADED_KMEANS_SIZE else 1, "blas": 1}
    with threadpool_limits(limits=threads), warnings.catch_warnings():
        # fewer distinct points than k: the surplus clusters are dropped below
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = model.fit(np.ascontiguousarray(points)).labels_
    return canonical_labels(labels.astype(np.int64))


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0 .. k'−1 by their first member, dropping empty ones."""
    used, first = np.unique(labels, return_index=True)
    rank = np.empty(len(used), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(used))
    lookup = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    lookup[used] = rank
    return lookup[labels]
