"""The package in its users' regime: few subjects and many voxels, wide data, data on disk.

Prints every figure of the scale issue, each section on its own (``--only`` picks some):

- ``defaults``: on a synthetic cohort of 500 volumes of 24^3 voxels with a planted age effect
  (``nidl_vae.datasets.make_cohort``), the linear R^2 of age read from the default VAE's latents
  (5-fold CV, each of ``--seeds``) against PCA with as many components, and the fit's wall
  time, each also with ``linear_path=True`` and with ``weight_decay=1e-3``; the cohort masked
  to its brain (as a ``NiftiMasker`` would); 300 brains built from nilearn's MNI152 template
  (``make_mni_cohort``, 6 mm, masked voxels), with the same options; and on
  digits (logistic regression accuracy, 10 latents).
- ``held-out``: the same cohort unmasked and masked, and the MNI-based brains: a VAE and PCA
  fitted on 80% of the subjects, a linear regression of age on their latents, its R^2 on the
  other 20% (new subjects, as a study would encode them), for each of ``--seeds``.
- ``width``: ``VAE.fit`` against a plain PyTorch loop of the same model at n = 2,000,
  p = 100,000 (float32 in memory, 2 epochs, interleaved, medians), and the rise of anonymous
  resident memory (RssAnon) during the fit against the data's size and the model's and
  optimizer's state.
- ``inference``: transform and log_likelihood on float64 vs float32 input; log_likelihood
  (K = 1,000) against MultiVae's per-sample loop (written out here) and against the
  decoder's passes alone over the same latent rows, on 500 digits and on 100 rows of 20,000
  features; the sweeps of latent rows decoded at once and of K (time and memory rise).
- ``disk``: fit and transform on a memory-mapped file of several GB, with the rise of
  anonymous memory (pages of the mapped file count in RSS, not in RssAnon).
- ``units``: the MNI-based brains (6 mm, masked) and the 1,160-voxel cohort as float32 and
  as int16 scanner units 1000 x + 100: the R^2 of age read from the default VAE's latents
  (5-fold) for each of ``--seeds``, with PCA's, and the largest difference between the two.

Every timing runs on one CPU thread (``torch.set_num_threads(1)``).

    python benchmarks/bench_scale.py [--only defaults held-out width inference disk units]
        [--repeats 3]
        [--seeds 0 1 2]
"""

import argparse
import copy
import math
import os
import statistics
import tempfile
import threading
import time

import numpy as np
import torch
from hand_inference import hand_transform
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import cross_val_score, train_test_split
from torch import nn

from nidl_vae import VAE
from nidl_vae.datasets import make_cohort, make_mni_cohort
from nidl_vae.optim import FeatureLinear


# ---------------------------------------------------------------- measuring
def rss_anon() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def peak_rise(fn):
    """Run ``fn``; return its result, its wall time and the peak rise of RssAnon (bytes)."""
    base, peak, done = rss_anon(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon() - base)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    try:
        out = fn()
    finally:
        elapsed = time.perf_counter() - start
        done.set()
        sampler.join()
    return out, elapsed, max(peak[0], rss_anon() - base)


def gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB"


# ---------------------------------------------------------------- the plain loop
class PlainVAE(nn.Module):
    """The estimator's default model written the way a PyTorch user would."""

    def __init__(self, n_features, hidden=(256, 128), latent=10):
        super().__init__()
        widths = [n_features, *hidden]
        layers = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*layers)
        self.mu, self.logvar = nn.Linear(hidden[-1], latent), nn.Linear(hidden[-1], latent)
        widths = [latent, *hidden[::-1]]
        layers = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.decoder = nn.Sequential(*layers, nn.Linear(widths[-1], n_features))
        self.raw_scale = nn.Parameter(torch.zeros(n_features))

    def loss(self, x):
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        scale = nn.functional.softplus(self.raw_scale) + 1e-3
        r = (x - self.decoder(z)) / scale
        nll = 0.5 * (r * r).sum(1) + scale.log().sum() + 0.5 * math.log(2 * math.pi) * x.shape[1]
        kl = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(1)
        return (nll + kl).mean()


def plain_fit(data: torch.Tensor, epochs: int, batch: int = 128, fused: bool = False):
    """The loop a PyTorch user writes; ``fused`` gives it the fused Adam the estimator uses."""
    torch.manual_seed(0)
    model = PlainVAE(data.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    for _ in range(epochs):
        perm = torch.randperm(len(data))
        for start in range(0, len(data), batch):
            opt.zero_grad()
            model.loss(data[perm[start : start + batch]]).backward()
            opt.step()
    return model


# ---------------------------------------------------------------- sections
def with_options(X, age, r2) -> None:
    """R^2 of age from the latents of two options that are not defaults."""
    for option in ({"linear_path": True}, {"weight_decay": 1e-3}):
        start = time.perf_counter()
        vae = VAE(latent_dim=4, random_state=0, **option).fit(X)
        seconds = time.perf_counter() - start
        score = r2(vae.transform(X), age)
        ((name, value),) = option.items()
        print(f"  VAE(latent_dim=4, {name}={value}): R^2 {score:.3f} ({seconds:.0f} s)")


def default_fits(X, score, seeds, **params) -> None:
    """``score`` of the default VAE's latents for each seed, with their median and minimum."""
    scores = []
    for seed in seeds:
        vae, seconds, _ = peak_rise(lambda s=seed: VAE(random_state=s, **params).fit(X))
        scores.append(score(vae.transform(X)))
        print(
            f"  VAE defaults, random_state={seed}: {scores[-1]:.3f} "
            f"({vae.n_iter_} epochs, {seconds:.0f} s)",
            flush=True,
        )
    if len(scores) > 1:
        print(
            f"  VAE defaults over {len(seeds)} seeds: median {np.median(scores):.3f}, "
            f"min {min(scores):.3f}"
        )


def brain_cohorts() -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
    """The few-subject, many-voxel cohorts: (name, X, age, whether the options are fitted)."""
    X, age, mask = make_cohort(500, (24, 24, 24))
    mni, mni_age, mni_mask, _, _ = make_mni_cohort(300, 6.0)
    return [
        ("cohort 500 x 13,824, unmasked", X, age, True),
        ("the same masked to the brain (4,160 voxels)", X[:, mask.ravel()], age, False),
        ("MNI-based brains, 6 mm, masked (8,735 voxels)", mni[:, 0][:, mni_mask], mni_age, True),
    ]


def defaults(args):
    print("== defaults: few subjects, many voxels, and digits ==")

    def r2(Z, target):
        return cross_val_score(LinearRegression(), Z, target, cv=5).mean()

    for name, X, age, options in brain_cohorts():
        print(f"{name} ({X.dtype})")
        print(f"  R^2 of age from 4 latents: PCA(4) {r2(PCA(4).fit_transform(X), age):.3f}")
        default_fits(X, lambda Z, age=age: r2(Z, age), args.seeds, latent_dim=4)
        if options:
            with_options(X, age, r2)
    X, y = load_digits(return_X_y=True)
    X = X / 16
    clf = LogisticRegression(max_iter=1000)
    print("digits: accuracy of a logistic regression from 10 latents (5-fold)")
    print(f"  PCA(10) {cross_val_score(clf, PCA(10).fit_transform(X), y, cv=5).mean():.3f}")
    default_fits(X, lambda Z: cross_val_score(clf, Z, y, cv=5).mean(), args.seeds)


def width(args):
    n, p, epochs = 2000, 100_000, 2
    print(f"== width: fit at n = {n}, p = {p:,} (float32, {epochs} epochs) ==")
    X = np.random.default_rng(0).normal(size=(n, p)).astype(np.float32)
    data = torch.from_numpy(X)
    torch.optim.Adam(nn.Linear(1, 1).parameters())  # first Adam imports torch._dynamo (~1 s)

    def estimator():
        return VAE(
            hidden_layer_sizes=(256, 128),
            latent_dim=10,
            batch_size=128,
            max_epochs=epochs,
            weight_decay=0.0,  # as the plain loop's Adam (which is per-weight on every layer)
            accelerator="cpu",
            random_state=0,
        ).fit(X)

    times = {"plain loop": [], "plain loop, fused Adam": [], "VAE.fit": []}
    ratios = {"plain loop": [], "plain loop, fused Adam": []}
    rises = []
    for _ in range(args.repeats):
        _, t_plain, _ = peak_rise(lambda: plain_fit(data, epochs))
        _, t_fused, _ = peak_rise(lambda: plain_fit(data, epochs, fused=True))
        vae, t_vae, rise = peak_rise(estimator)
        for name, t in (("plain loop", t_plain), ("plain loop, fused Adam", t_fused)):
            times[name].append(t)
            ratios[name].append(t_vae / t)
        times["VAE.fit"].append(t_vae)
        rises.append(rise)
    for name, values in times.items():
        print(f"  {name:<24} median {statistics.median(values):.1f} s")
    for name, values in ratios.items():
        print(
            f"  VAE.fit / {name:<24} median {statistics.median(values):.3f}x  "
            f"(runs: {np.round(values, 3)})"
        )
    # weights, gradients and Adam's two moments; the encoder's first layer (row-wise) has one
    first = next(m for m in vae.module_.modules() if isinstance(m, FeatureLinear))
    state = (sum(p.numel() for p in vae.module_.parameters()) * 4 - first.weight.numel()) * 4
    print(
        f"  RssAnon rise during fit {gb(max(rises))} for data {gb(X.nbytes)} and model + "
        f"optimizer state {gb(state)}: {(max(rises) - state) / X.nbytes:.2f}x the data beyond "
        "the state"
    )
    # transform through Trainer.predict against the estimators' former hand-written loop
    pairs = [(timed(lambda: hand_transform(vae, X), 1), timed(lambda: vae.transform(X), 1))]
    pairs += [
        (timed(lambda: hand_transform(vae, X), 1), timed(lambda: vae.transform(X), 1))
        for _ in range(max(args.repeats, 5) - 1)
    ]
    hand, trainer = (statistics.median(t) for t in zip(*pairs, strict=True))
    print(
        f"  transform: {trainer:.2f} s through Trainer.predict, {hand:.2f} s by the former hand "
        f"loop: {statistics.median(t / h for h, t in pairs):.3f}x (median of {len(pairs)} "
        "interleaved runs)"
    )


def per_sample_log_likelihood(vae: VAE, X: np.ndarray, K: int, batch_size_K: int = 100):
    """MultiVae's estimate (``compute_joint_nll``), written the same way: one row at a time,
    its K posterior draws decoded ``batch_size_K`` at a time by a decoder that returns a dict,
    the row stacked once per draw as the target, densities from ``torch.distributions``, a
    logsumexp per chunk and one over the chunks; through the fitted weights (ReLUs not in
    place, as in MultiVae's layers)."""
    module = vae.module_.model
    layers = copy.deepcopy(module.decoder)
    for layer in layers.modules():
        if isinstance(layer, nn.ReLU):
            layer.inplace = False
    dist = torch.distributions
    scale = module.likelihood.scale()

    def decoder(z):
        return {"reconstruction": layers(z)}

    def recon_log_prob(recon, target):
        return dist.Normal(recon, scale).log_prob(target)

    out = []
    with torch.no_grad():
        data = torch.from_numpy(X.astype(np.float32))
        mu, logvar = module.posterior({"x": data})
        z_all = dist.Normal(mu, torch.exp(0.5 * logvar)).rsample([K]).permute(1, 0, 2)
        for i in range(len(data)):
            start, stop = 0, min(batch_size_K, K)
            log_chunks = []
            while start < stop:
                z = z_all[i][start:stop]
                recon = decoder(z)["reconstruction"]
                target = torch.stack([data[i]] * len(recon))
                log_px = recon_log_prob(recon, target).reshape(recon.size(0), -1).sum(-1)
                log_pz = dist.Normal(0, 1).log_prob(z).sum(dim=-1)
                log_qz = dist.Normal(mu[i], torch.exp(0.5 * logvar[i])).log_prob(z).sum(-1)
                log_chunks.append(torch.logsumexp(log_px + log_pz - log_qz, dim=0))
                start += batch_size_K
                stop = min(stop + batch_size_K, K)
            out.append(torch.logsumexp(torch.Tensor(log_chunks), dim=0) - math.log(K))
    return torch.stack(out).numpy()


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decoder_passes(vae: VAE, n_rows: int, K: int) -> None:
    """The decoder alone on the K x n_rows latent rows both estimates decode, as many at a
    time as the estimator decodes: what a loop without any overhead would still cost."""
    import nidl_vae.module

    z = torch.randn(nidl_vae.module.DECODE_ROWS, vae.latent_dim)
    with torch.no_grad():
        for _ in range(-(-n_rows * K // len(z))):
            vae.module_.model.decoder(z)


def against_the_loop(vae: VAE, rows: np.ndarray, what: str, n_pairs: int) -> None:
    """Print log_likelihood (K = 1,000) against the per-sample loop and against the decoder's
    passes alone: interleaved, medians."""
    triples = [
        (
            timed(lambda: vae.log_likelihood(rows, n_importance=1000), 1),
            timed(lambda: per_sample_log_likelihood(vae, rows, 1000), 1),
            timed(lambda: decoder_passes(vae, len(rows), 1000), 1),
        )
        for _ in range(n_pairs)
    ]
    t_vae, t_loop, t_decoder = (statistics.median(t) for t in zip(*triples, strict=True))
    speedup = statistics.median(loop / ours for ours, loop, _ in triples)
    bound = statistics.median(loop / decoder for _, loop, decoder in triples)
    print(
        f"  log_likelihood K=1000 on {what}: {t_vae:.2f} s; MultiVae's per-sample loop "
        f"{t_loop:.2f} s ({speedup:.1f}x faster, median of {n_pairs} interleaved runs); the "
        f"decoder's passes alone {t_decoder:.2f} s (the loop takes {bound:.1f}x that)"
    )


def inference(args):
    import nidl_vae.module

    print("== inference ==")
    X, _ = load_digits(return_X_y=True)
    X64 = X / 16
    X32 = X64.astype(np.float32)
    vae = VAE(max_epochs=20, random_state=0).fit(X64)
    for name, fn in [
        ("transform", lambda A: vae.transform(A)),
        ("log_likelihood K=100", lambda A: vae.log_likelihood(A[:500], n_importance=100)),
    ]:
        ratios = [
            timed(lambda fn=fn: fn(X64), 3) / timed(lambda fn=fn: fn(X32), 3) for _ in range(5)
        ]
        print(f"  {name} on digits: float64 / float32 time {statistics.median(ratios):.2f}x")
    rows = X64[:500]
    against_the_loop(vae, rows, "500 rows", 5)
    default = nidl_vae.module.DECODE_ROWS
    for decoded_rows in (1024, 4096, 16384, 65536):
        nidl_vae.module.DECODE_ROWS = decoded_rows
        _, seconds, rise = peak_rise(lambda: vae.log_likelihood(rows, n_importance=1000))
        mark = "  (default)" if decoded_rows == default else ""
        print(
            f"  decoding {decoded_rows:>6} latent rows at once: {seconds:.2f} s, "
            f"RssAnon rise {gb(rise)}{mark}"
        )
    nidl_vae.module.DECODE_ROWS = default
    for K in (1000, 5000, 20000):
        _, seconds, rise = peak_rise(lambda K=K: vae.log_likelihood(X64[:400], n_importance=K))
        print(f"  400 rows, K = {K:>6}: {seconds:.2f} s, RssAnon rise {gb(rise)}")
    Xw = np.random.default_rng(0).normal(size=(2000, 20_000))
    wide = VAE(max_epochs=1, batch_size=128, random_state=0).fit(Xw.astype(np.float32))
    ratios = [
        timed(lambda: wide.transform(Xw), 3)
        / timed(lambda: wide.transform(Xw.astype(np.float32)), 3)
        for _ in range(3)
    ]
    print(f"  transform at p = 20,000: float64 / float32 time {statistics.median(ratios):.2f}x")
    against_the_loop(wide, Xw[:100].astype(np.float32), "100 rows at p = 20,000", 3)


def disk(args):
    n, p = args.disk_rows, 50_000
    print(f"== disk: a {n} x {p:,} float32 memory map ({gb(n * p * 4)}) ==")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "cohort.f32")
        X = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, p))
        rng = np.random.default_rng(0)
        factors = rng.normal(size=(n, 2)).astype(np.float32)
        loadings = rng.normal(size=(2, p)).astype(np.float32)
        for start in range(0, n, 1000):
            stop = min(n, start + 1000)
            X[start:stop] = factors[start:stop] @ loadings + rng.normal(
                size=(stop - start, p)
            ).astype(np.float32)
        X.flush()
        del X
        X = np.memmap(path, dtype=np.float32, mode="r", shape=(n, p))
        vae, seconds, rise = peak_rise(
            lambda: VAE(hidden_layer_sizes=(32,), latent_dim=2, max_epochs=1, random_state=0).fit(X)
        )
        state = sum(t.numel() for t in vae.module_.parameters()) * 4 * 4
        print(
            f"  fit (1 epoch): {seconds:.1f} s, RssAnon rise {gb(rise)} "
            f"(model + optimizer state {gb(state)})"
        )
        Z, seconds, rise = peak_rise(lambda: vae.transform(X))
        r = max(abs(np.corrcoef(Z[:, k], factors[:, 0])[0, 1]) for k in range(2))
        print(f"  transform: {seconds:.1f} s, RssAnon rise {gb(rise)}; |corr| with factor {r:.2f}")


def held_out_r2(model, train, test, y_train, y_test) -> float:
    """R^2 on the test rows of a linear regression of y on the training rows' latents."""
    regression = LinearRegression().fit(model.transform(train), y_train)
    return regression.score(model.transform(test), y_test)


def held_out(args):
    print("== held-out subjects: R^2 of age from 4 latents of subjects the model did not see ==")
    for name, data, target, _ in brain_cohorts():
        split = train_test_split(data, target, test_size=0.2, random_state=0)
        train = split[0]
        scores = [
            held_out_r2(VAE(latent_dim=4, random_state=s).fit(train), *split) for s in args.seeds
        ]
        print(
            f"  {name}: PCA(4) {held_out_r2(PCA(4).fit(train), *split):.3f}; VAE defaults, "
            f"random_state={', '.join(map(str, args.seeds))}: "
            + ", ".join(f"{score:.3f}" for score in scores),
            flush=True,
        )


def units(args):
    print("== units: float data and the same as int16 scanner units 1000 x + 100 ==")

    def r2(Z, target):
        return cross_val_score(LinearRegression(), Z, target, cv=5).mean()

    small, small_age, small_mask = make_cohort(300, (16, 16, 16))
    mni, mni_age, mni_mask, _, _ = make_mni_cohort(300, 6.0)
    cohorts = [
        ("cohort 300 x 4,096 masked (1,160 voxels)", small[:, small_mask.ravel()], small_age),
        ("MNI-based brains, 6 mm, masked (8,735 voxels)", mni[:, 0][:, mni_mask], mni_age),
    ]
    for name, X, age in cohorts:
        raw = (X * 1000 + 100).astype(np.int16)
        print(f"{name}: R^2 of age from 4 latents, PCA(4) {r2(PCA(4).fit_transform(X), age):.3f}")
        gaps = []
        for seed in args.seeds:
            scores = [
                r2(VAE(latent_dim=4, random_state=seed).fit_transform(data), age)
                for data in (X, raw)
            ]
            gaps.append(abs(scores[1] - scores[0]))
            print(f"  random_state={seed}: float {scores[0]:.3f}, int16 {scores[1]:.3f}")
        print(f"  largest difference: {max(gaps):.3f}")


SECTIONS = {
    "defaults": defaults,
    "held-out": held_out,
    "width": width,
    "inference": inference,
    "disk": disk,
    "units": units,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="random_state of the default fits"
    )
    parser.add_argument("--disk-rows", type=int, default=20_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.only:
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
