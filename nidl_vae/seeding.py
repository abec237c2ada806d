"""Seeds: one integer per fit, and named streams derived from it for every kind of draw.

The fit's seed (``draw_seed(random_state)``) draws the initial weights, the shuffling, the
validation split and the training noise, as it always has. Inference draws each come from
a stream of their own, named by what they are for, so no two kinds of draw share random
numbers and adding a stream changes none of the others. Nothing here touches a global
generator.
"""

from numbers import Integral
from zlib import crc32

import numpy as np
from sklearn.utils.validation import check_random_state

# what each inference stream draws
STREAMS = {
    "transform": "the noise of a stochastic transform, one row per input row",
    "score": "the latent draws of score_samples (the ELBO)",
    "log_likelihood": "the importance draws of log_likelihood",
    "sample": "the prior draws of sample() when no random_state is given",
    "impute": "the posterior draws of impute",
}


def draw_seed(random_state) -> int:
    """An integer seed from ``random_state``, leaving every global generator untouched.

    An int is used as it is; a ``RandomState`` gives one draw; None draws fresh entropy from
    the operating system (not from numpy's global generator).
    """
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0] >> 1)
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def stream_seed(seed: int, stream: str) -> int:
    """The seed of the named ``stream`` of a fit seeded with ``seed``."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; the streams are {list(STREAMS)}")
    return int(np.random.SeedSequence([seed, crc32(stream.encode())]).generate_state(1)[0])


def standard_normal(seed: int, stream: str | None, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise of ``shape`` from the named stream of ``seed`` (or from
    ``seed`` itself for None), drawn on the host (the same on every machine and device) and
    in order, so that the first rows of a larger draw are the draw of fewer rows: a row's
    noise does not depend on how many rows follow."""
    seed = seed if stream is None else stream_seed(seed, stream)
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal(shape, dtype=np.float32)
