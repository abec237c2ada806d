"""Time ``VAE.fit`` and ``VAE.transform`` against a hand-written PyTorch loop.

Same model (MLP 64-256-128, latent 10, Gaussian likelihood with a learned per-feature scale),
loss, optimizer (Adam, lr 1e-3), batch size (128) and epochs (20) on scikit-learn's digits
scaled to [0, 1], one thread, runs interleaved; prints the median of the per-pair ratios.

    python benchmarks/bench_vae_speed.py [--repeats 7] [--device cpu|cuda]
"""

import argparse
import math
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from nidl_vae import VAE

EPOCHS, BATCH, LATENT, HIDDEN = 20, 128, 10, (256, 128)


class PlainVAE(nn.Module):
    def __init__(self, n_features):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(n_features, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU()
        )
        self.mu, self.logvar = nn.Linear(128, LATENT), nn.Linear(128, LATENT)
        self.decoder = nn.Sequential(
            nn.Linear(LATENT, 128),
            nn.ReLU(),
            nn.Linear(128, 256),
            nn.ReLU(),
            nn.Linear(256, n_features),
        )
        self.raw_scale = nn.Parameter(torch.zeros(n_features))

    def loss(self, x):
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        scale = nn.functional.softplus(self.raw_scale) + 1e-3
        nll = (
            0.5 * math.log(2 * math.pi) + scale.log() + 0.5 * ((x - self.decoder(z)) / scale) ** 2
        ).sum(1)
        kl = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(1)
        return (nll + kl).mean()


def plain_fit(X, device):
    torch.manual_seed(0)
    model = PlainVAE(X.shape[1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.from_numpy(X)
    for _ in range(EPOCHS):
        perm = torch.randperm(len(data))
        for start in range(0, len(data), BATCH):
            batch = data[perm[start : start + BATCH]].to(device)
            opt.zero_grad()
            loss = model.loss(batch)
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
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    X = (load_digits().data / 16).astype(np.float32)
    accelerator = "gpu" if args.device == "cuda" else "cpu"

    def make():
        return VAE(
            hidden_layer_sizes=HIDDEN,
            latent_dim=LATENT,
            batch_size=BATCH,
            max_epochs=EPOCHS,
            accelerator=accelerator,
            random_state=0,
        )

    timed(lambda: plain_fit(X, args.device)), timed(lambda: make().fit(X))  # warm-up
    fit_ratios, plain_times, vae_times = [], [], []
    for _ in range(args.repeats):
        t_plain, plain = timed(lambda: plain_fit(X, args.device))
        t_vae, vae = timed(lambda: make().fit(X))
        plain_times.append(t_plain)
        vae_times.append(t_vae)
        fit_ratios.append(t_vae / t_plain)
    print(
        f"fit, {EPOCHS} epochs on digits ({args.device}, 1 thread, {args.repeats} interleaved runs)"
    )
    print(f"  plain loop  median {statistics.median(plain_times):.3f} s")
    print(f"  VAE.fit     median {statistics.median(vae_times):.3f} s")
    print(f"  ratio       median {statistics.median(fit_ratios):.3f}x")

    encoder = nn.Sequential(plain.encoder, plain.mu).eval()
    data = torch.from_numpy(X).to(args.device)

    def plain_transform():
        with torch.inference_mode():
            out = encoder(data).cpu().numpy()
        return out

    t_ratios = []
    for _ in range(max(args.repeats, 20)):
        t_plain = statistics.median(timed(plain_transform)[0] for _ in range(5))
        t_vae = statistics.median(timed(lambda: vae.transform(X))[0] for _ in range(5))
        t_ratios.append(t_vae / t_plain)
    print(
        f"transform of {len(X)} rows: plain encoder {t_plain * 1e3:.2f} ms, "
        f"VAE.transform {t_vae * 1e3:.2f} ms, ratio median {statistics.median(t_ratios):.2f}x"
    )


if __name__ == "__main__":
    main()
