"""Time an estimator's ``fit`` and ``transform`` against a hand-written PyTorch loop, and
``transform`` (through ``Trainer.predict``) against the estimators' former hand loop.

Same model (MLP 256-128 encoder, mirrored decoder, latent 10, Gaussian likelihood with a learned
per-feature scale), loss, optimizer (Adam, lr 1e-3), batch size (128) and epochs (20) on
scikit-learn's digits scaled to [0, 1], one thread, runs interleaved; prints medians and the
median of the per-pair ratios.

    python benchmarks/bench_speed.py [--model vae|cvae|crmvae] [--repeats 7] [--device cpu|cuda]

``cvae`` conditions on the digit label (one-hot), the prior being N(0, I) as in the
estimator's default. ``crmvae`` splits each digit into a top-half and a bottom-half modality
(32 pixels each, no missing rows) with the CRMVAE's loss (beta 2.5) and a 256-128 MLP per
modality, as MultiVae's benchmark does.
"""

import argparse
import math
import statistics
import time

import numpy as np
import torch
from hand_inference import hand_transform
from sklearn.datasets import load_digits
from torch import nn

from nidl_vae import CRMVAE, CVAE, VAE

EPOCHS, BATCH, LATENT, HIDDEN = 20, 128, 10, (256, 128)


class PlainVAE(nn.Module):
    """A (conditional, when ``n_cond`` > 0) VAE written the way a PyTorch user would."""

    def __init__(self, n_features, n_cond=0):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(n_features + n_cond, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU()
        )
        self.mu = nn.Linear(128 + n_cond, LATENT)
        self.logvar = nn.Linear(128 + n_cond, LATENT)
        self.decoder = nn.Sequential(
            nn.Linear(LATENT + n_cond, 128),
            nn.ReLU(),
            nn.Linear(128, 256),
            nn.ReLU(),
            nn.Linear(256, n_features),
        )
        self.raw_scale = nn.Parameter(torch.zeros(n_features))

    def encode(self, x, c):
        h = torch.cat([self.encoder(torch.cat([x, c], 1)), c], 1)
        return self.mu(h)

    def loss(self, x, c):
        h = torch.cat([self.encoder(torch.cat([x, c], 1)), c], 1)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        scale = nn.functional.softplus(self.raw_scale) + 1e-3
        location = self.decoder(torch.cat([z, c], 1))
        nll = (0.5 * math.log(2 * math.pi) + scale.log() + 0.5 * ((x - location) / scale) ** 2).sum(
            1
        )
        kl = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(1)
        return (nll + kl).mean()


class PlainCRMVAE(nn.Module):
    """A two-modality CRMVAE (complete rows) written the way a PyTorch user would."""

    def __init__(self, n_features, n_cond=0):
        super().__init__()
        self.width = n_features // 2
        self.experts = nn.ModuleList([PlainVAE(self.width) for _ in range(2)])

    def encode(self, x, c):
        return self.joint(x)[0]

    def joint(self, x):
        halves = (x[:, : self.width], x[:, self.width :])
        params = []
        for expert, half in zip(self.experts, halves, strict=True):
            h = expert.encoder(half)
            params.append((expert.mu(h), expert.logvar(h)))
        precision = sum(torch.exp(-lv) for _, lv in params)
        mu = sum(m * torch.exp(-lv) for m, lv in params) / precision
        return mu, -torch.log(precision), params, halves

    def loss(self, x, c):
        mu, logvar, params, halves = self.joint(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        total = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(1)
        for expert, (m, lv), half in zip(self.experts, params, halves, strict=True):
            scale = nn.functional.softplus(expert.raw_scale) + 1e-3
            z_m = m + torch.exp(0.5 * lv) * torch.randn_like(m)
            for latent in (z, z_m):
                loc = expert.decoder(latent)
                total = (
                    total
                    + (
                        0.5 * math.log(2 * math.pi)
                        + scale.log()
                        + 0.5 * ((half - loc) / scale) ** 2
                    ).sum(1)
                    / 2.5
                )  # the reconstructions' weight pi over beta's
            total = total + 0.5 * (lv - logvar + (logvar.exp() + (mu - m) ** 2) / lv.exp() - 1).sum(
                1
            )
        return 2.5 / 3 * total.mean()


def plain_fit(X, C, device, Model):
    torch.manual_seed(0)
    model = Model(X.shape[1], C.shape[1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data, conditions = torch.from_numpy(X), torch.from_numpy(C)
    for _ in range(EPOCHS):
        perm = torch.randperm(len(data))
        for start in range(0, len(data), BATCH):
            index = perm[start : start + BATCH]
            opt.zero_grad()
            loss = model.loss(data[index].to(device), conditions[index].to(device))
            loss.backward()
            opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return model


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["vae", "cvae", "crmvae"], default="vae")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits = load_digits()
    X = (digits.data / 16).astype(np.float32)
    y = digits.target if args.model == "cvae" else None
    C = np.eye(10, dtype=np.float32)[y] if y is not None else X[:, :0]
    extra = {} if y is None else {"conditions": y}
    Estimator = {"vae": VAE, "cvae": CVAE, "crmvae": CRMVAE}[args.model]
    Model = PlainCRMVAE if args.model == "crmvae" else PlainVAE
    options = dict(modalities=[32, 32]) if args.model == "crmvae" else {}
    accelerator = "gpu" if args.device == "cuda" else "cpu"

    def estimator_fit():
        return Estimator(
            hidden_layer_sizes=HIDDEN,
            latent_dim=LATENT,
            batch_size=BATCH,
            max_epochs=EPOCHS,
            weight_decay=0.0,  # the plain loop's Adam: the same optimizer
            accelerator=accelerator,
            random_state=0,
            **options,
        ).fit(X, **extra)

    timed(lambda: plain_fit(X, C, args.device, Model)), timed(estimator_fit)  # warm-up
    fit_ratios, plain_times, estimator_times = [], [], []
    for _ in range(args.repeats):
        t_plain, plain = timed(lambda: plain_fit(X, C, args.device, Model))
        t_estimator, estimator = timed(estimator_fit)
        plain_times.append(t_plain)
        estimator_times.append(t_estimator)
        fit_ratios.append(t_estimator / t_plain)
    name = Estimator.__name__
    print(
        f"{name} fit, {EPOCHS} epochs on digits ({args.device}, 1 thread, "
        f"{args.repeats} interleaved runs)"
    )
    print(f"  plain loop  median {statistics.median(plain_times):.3f} s")
    print(f"  {name}.fit  median {statistics.median(estimator_times):.3f} s")
    print(f"  ratio       median {statistics.median(fit_ratios):.3f}x")

    plain.eval()
    data = torch.from_numpy(X).to(args.device)
    conditions = torch.from_numpy(C).to(args.device)

    def plain_transform():
        with torch.inference_mode():
            out = plain.encode(data, conditions).cpu().numpy()
        return out

    def hand_loop():
        if args.model == "crmvae":  # the former loop is written for a VAE's rows
            return None
        return hand_transform(estimator, X, **extra)

    t_ratios, fixed_costs, triples = [], [], []
    for _ in range(max(args.repeats, 20)):
        t_plain = statistics.median(timed(plain_transform)[0] for _ in range(5))
        t_hand = statistics.median(timed(hand_loop)[0] for _ in range(5))
        t_estimator = statistics.median(
            timed(lambda: estimator.transform(X, **extra))[0] for _ in range(5)
        )
        t_ratios.append(t_estimator / t_plain)
        fixed_costs.append(t_estimator - t_hand)
        triples.append((t_plain, t_hand, t_estimator))
    t_plain, t_hand, t_estimator = (statistics.median(t) for t in zip(*triples, strict=True))
    print(
        f"transform of {len(X)} rows: plain encoder {t_plain * 1e3:.2f} ms, "
        f"{name}.transform {t_estimator * 1e3:.2f} ms, "
        f"ratio median {statistics.median(t_ratios):.2f}x"
    )
    if args.model != "crmvae":
        print(
            f"  through Trainer.predict: {t_estimator * 1e3:.1f} ms where the former hand loop "
            f"took {t_hand * 1e3:.1f} ms: a fixed cost of "
            f"{statistics.median(fixed_costs) * 1e3:.1f} ms per call (median of "
            f"{len(fixed_costs)} interleaved runs)"
        )


if __name__ == "__main__":
    main()
