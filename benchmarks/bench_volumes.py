"""Whole volumes: the default convolutional VAE against PCA and the MLP on masked voxels, and
its speed against a plain PyTorch loop of the same convolutional model.

- ``quality``: on a synthetic cohort built from nilearn's bundled MNI152 template
  (``nidl_vae.datasets.make_mni_cohort``: an age effect in two medial temporal regions, smooth
  subject variation and noise), the 5-fold cross-validated linear R^2 of age read from 4
  latents of ``VAE()`` fitted on the volumes (default convolutional networks), from PCA(4)
  and from ``VAE()`` on the masked voxels (default MLP; ``mlp-volumes``: on the whole volumes
  flattened, background included, as the convolutional VAE sees them; ``conv-no-path``: the
  convolutional VAE without its decoder's linear path), with each model's
  parameter count and fit time; and whether the decoder draws the effect: the mean latent
  path from 30 to 70 years (least squares of the latents on age), decoded, against the planted
  change (their correlation over the brain's voxels, and the ratio of their largest losses).
- ``speed``: seconds per epoch of ``VAE.fit`` on the volumes against a plain loop of the same
  networks (``nidl_vae.networks.conv_encoder``/``conv_decoder`` with Gaussian heads, a learned
  per-voxel scale, fused Adam), interleaved, medians.

Every timing runs on one CPU thread, or on the GPU with ``--device cuda``.

    python benchmarks/bench_volumes.py [--only quality speed] [--resolution 4] [--subjects 300]
        [--weight-decay W] [--seeds 0 1 2] [--networks mlp conv conv-no-path mlp-volumes]
"""

import argparse
import math
import statistics
import time

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import cross_val_score
from torch import nn

from nidl_vae import VAE
from nidl_vae.datasets import make_mni_cohort, planted_ageing
from nidl_vae.networks import conv_decoder, conv_encoder


def n_parameters(vae: VAE) -> int:
    return sum(p.numel() for p in vae.module_.parameters())


def decoded_ageing(vae: VAE, X, Z, age, mask, ageing) -> tuple[float, float]:
    """The decoded 30 -> 70 change on the brain's voxels against the planted one: their
    correlation, and the ratio of their largest intensity losses."""
    path = LinearRegression().fit(age[:, None], Z).predict([[30.0], [70.0]])
    decoded = vae.inverse_transform(path)
    change = decoded[1] - decoded[0]  # masked voxels, or a whole volume (flat or not)
    if change.size == mask.size:
        change = change.reshape(mask.shape)[mask]
    planted = planted_ageing(X, age, ageing)[mask]
    return np.corrcoef(change, planted)[0, 1], change.min() / planted.min()


def quality(args, X, age, mask, ageing):
    print(f"== quality: {len(X)} subjects, volumes {X.shape[2:]} at {args.resolution} mm ==")

    def r2(Z):
        return cross_val_score(LinearRegression(), Z, age, cv=5).mean()

    masked, flat = X[:, 0][:, mask], X.reshape(len(X), -1)
    for data, what in ((masked, "masked voxels"), (flat, "voxels of the whole volumes")):
        print(f"  PCA(4) on {data.shape[1]:,} {what}: R^2 {r2(PCA(4).fit_transform(data)):.3f}")
    networks = {
        "mlp": ("VAE, MLP on masked voxels", masked),
        "conv": ("VAE, convolutional on volumes", X),
        "conv-no-path": ("VAE, convolutional on volumes, linear_path=False", X),
        "mlp-volumes": ("VAE, MLP on whole volumes", flat),
    }
    options = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}
    for key in args.networks:
        name, data = networks[key]
        given = {**options, "linear_path": False} if key == "conv-no-path" else options
        scores = []
        for seed in args.seeds:
            start = time.perf_counter()
            vae = VAE(latent_dim=4, accelerator=args.device, random_state=seed, **given)
            vae.fit(data)
            seconds = time.perf_counter() - start
            Z = vae.transform(data)
            scores.append(r2(Z))
            match, size = decoded_ageing(vae, X, Z, age, mask, ageing)
            print(
                f"  {name}, random_state={seed}: R^2 {scores[-1]:.3f}, "
                f"{n_parameters(vae):,} parameters, {vae.n_iter_} epochs in {seconds:.0f} s; "
                f"decoded 30->70 change: correlation {match:.3f} with the planted one, "
                f"largest loss {size:.2f}x the planted",
                flush=True,
            )
        if len(scores) > 1:
            print(
                f"  {name}: R^2 median {statistics.median(scores):.3f}, "
                f"min {min(scores):.3f} over {len(scores)} seeds"
            )


class PlainConvVAE(nn.Module):
    """The estimator's default convolutional model, trained the way a PyTorch user would."""

    def __init__(self, shape, channels=(8, 16, 32, 64), latent=4):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.encoder = conv_encoder(shape, channels, generator=generator)
        width = self.encoder(torch.zeros(1, *shape)).numel()
        self.mu, self.logvar = nn.Linear(width, latent), nn.Linear(width, latent)
        self.decoder = conv_decoder(shape, channels, latent, generator=generator, linear_path=True)
        self.raw_scale = nn.Parameter(torch.zeros(math.prod(shape)))

    def loss(self, x):
        h = self.encoder(x).flatten(1)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        scale = nn.functional.softplus(self.raw_scale) + 1e-3
        r = (x.flatten(1) - self.decoder(z).flatten(1)) / scale
        nll = 0.5 * (r * r).sum(1) + scale.log().sum() + 0.5 * math.log(2 * math.pi) * r.shape[1]
        kl = 0.5 * (logvar.exp() + mu**2 - 1 - logvar).sum(1)
        return (nll + kl).mean()


def plain_epoch(model, opt, data, batch, device):
    perm = torch.randperm(len(data))
    for start in range(0, len(data), batch):
        opt.zero_grad()
        model.loss(data[perm[start : start + batch]].to(device)).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


def speed(args, X):
    epochs, batch = 2, max(16, min(128, len(X) // 16))
    print(f"== speed: {epochs} epochs of {len(X)} volumes {X.shape[2:]}, batch {batch} ==")
    data = torch.from_numpy(X)
    device = torch.device(args.device)
    model = PlainConvVAE(X.shape[1:]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    plain_epoch(model, opt, data[: 2 * batch], batch, device)  # first-call costs paid here
    plain, ours = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(epochs):
            plain_epoch(model, opt, data, batch, device)
        plain.append((time.perf_counter() - start) / epochs)
        start = time.perf_counter()
        VAE(  # weight_decay=0: the plain loop's Adam, the same optimizer
            latent_dim=4,
            max_epochs=epochs,
            weight_decay=0.0,
            accelerator=args.device,
            random_state=0,
        ).fit(X)
        ours.append((time.perf_counter() - start) / epochs)
    ratios = [b / a for a, b in zip(plain, ours, strict=True)]
    print(f"  plain loop {statistics.median(plain):.2f} s per epoch")
    print(f"  VAE.fit    {statistics.median(ours):.2f} s per epoch")
    print(f"  ratio      {statistics.median(ratios):.3f}x (runs: {np.round(ratios, 3)})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", nargs="+", choices=["quality", "speed"], default=["quality", "speed"]
    )
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="the VAEs' weight_decay (quality; default: the estimator's)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="the VAEs' random_state (quality)"
    )
    parser.add_argument(
        "--networks",
        nargs="+",
        choices=["mlp", "conv", "conv-no-path", "mlp-volumes"],
        default=["mlp", "conv"],
        help="which VAEs to fit (quality)",
    )
    args = parser.parse_args()
    args.device = "gpu" if args.device == "cuda" else "cpu"
    torch.set_num_threads(1)
    X, age, mask, _, ageing = make_mni_cohort(args.subjects, args.resolution)
    if "quality" in args.only:
        quality(args, X, age, mask, ageing)
    if "speed" in args.only:
        speed(args, X)


if __name__ == "__main__":
    main()
