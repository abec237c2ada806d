"""Image-shaped X: (n, C, H, W) images and (n, C, D, H, W) volumes, in memory, on disk or in a
Dataset, with the default convolutional networks or a user's module."""

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from torch import nn
from torch.utils.data import Dataset

from nidl_vae import CRMVAE, CVAE, VAE
from nidl_vae.networks import WithLinearPath, conv_decoder, conv_encoder

SMALL = dict(latent_dim=2, conv_channels=(4, 8), max_epochs=3, random_state=0)


@pytest.fixture(scope="module")
def volumes():
    """Smooth random volumes of odd sizes (9 x 11 x 7), one channel, a few noisy factors."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (9, 11, 7)], indexing="ij"))
    maps = np.stack(
        [
            np.exp(-((grid - c[:, None, None, None]) ** 2).sum(0) * 3)
            for c in rng.uniform(-0.5, 0.5, (2, 3))
        ]
    )
    factors = rng.normal(size=(60, 2))
    X = np.einsum("nk,kdhw->ndhw", factors, maps) + 0.05 * rng.normal(size=(60, 9, 11, 7))
    return X[:, None].astype(np.float32), factors


@pytest.fixture(scope="module")
def digit_images(digits):
    X, y = digits
    return X[:400].reshape(-1, 1, 8, 8), y[:400]


def test_default_networks_pad_and_crop_odd_sizes():
    generator = torch.Generator().manual_seed(0)
    for shape in [(1, 91, 109, 91), (2, 9, 11, 7), (3, 8, 8)]:
        encoder = conv_encoder(shape, (4, 8, 16, 32), generator=generator)
        decoder = conv_decoder(shape, (4, 8, 16, 32), 5, generator=generator)
        assert decoder(torch.zeros(2, 5)).shape == (2, *shape)
        assert torch.isfinite(encoder(torch.zeros(2, *shape))).all()
    # 91 -> 96 = 6 x 2^4 along the first side: four layers, a 6 x 7 x 6 feature map
    encoder = conv_encoder((1, 91, 109, 91), (4, 8, 16, 32), generator=generator)
    assert encoder(torch.zeros(1, 1, 91, 109, 91)).shape == (1, 32, 6, 7, 6)
    # 8 x 8 images stop after two layers (2 x 2), whatever the channels given
    assert conv_encoder((1, 8, 8), (4, 8, 16, 32), generator=generator)(
        torch.zeros(1, 1, 8, 8)
    ).shape == (1, 8, 2, 2)


def test_the_convolutional_decoder_has_a_linear_path_started_at_zero(volumes):
    X, factors = volumes
    shape, z = X.shape[1:], torch.randn(3, 5)
    with_path, without = (
        conv_decoder(shape, (4, 8), 5, generator=torch.Generator().manual_seed(0), linear_path=p)
        for p in (True, False)
    )
    assert isinstance(with_path, WithLinearPath) and with_path.path.weight.shape == (X[0].size, 5)
    # the path draws nothing from the generator and adds zero at the start
    assert_array_equal(with_path(z).detach(), without(z).detach())
    with torch.no_grad():
        with_path.path.weight[:, 1] = 1.0
    assert torch.allclose(
        with_path(z) - without(z), z[:, 1, None, None, None, None].expand(3, *shape)
    )

    # 'auto': on for volumes (the CVAE's reads the condition too), off for rows of features
    cvae = CVAE(**SMALL).fit(X, conditions=factors[:, 0])
    assert cvae.module_.model.decoder.path.in_features == 2 + 1
    assert cvae.module_.model.decoder.path.weight.abs().max() > 0  # trained
    assert not isinstance(
        VAE(**SMALL, linear_path=False).fit(X).module_.model.decoder, WithLinearPath
    )
    rows = VAE(**SMALL).fit(X.reshape(len(X), -1))
    assert rows.hidden_layer_sizes_ == (64,)  # 'auto' on more features than rows
    assert rows.module_.model.decoder[-1].in_features == 64  # its last hidden layer, no path


def test_images_get_convolutional_networks_and_keep_their_shape(digit_images):
    X, _ = digit_images
    vae = VAE(**SMALL).fit(X)
    assert vae.input_shape_ == (1, 8, 8) and vae.n_features_in_ == 64
    assert any(isinstance(m, nn.Conv2d) for m in vae.module_.model.encoder.modules())
    assert any(isinstance(m, nn.ConvTranspose2d) for m in vae.module_.model.decoder.modules())
    Z = vae.transform(X)
    assert Z.shape == (400, 2) and Z.dtype == X.dtype
    assert vae.inverse_transform(Z[:5]).shape == (5, 1, 8, 8)
    assert vae.sample(3).shape == (3, 1, 8, 8)
    assert vae.score_samples(X).shape == (400,) and np.isfinite(vae.log_likelihood(X[:10])).all()
    assert vae.history_["loss"][-1] < vae.history_["loss"][0]
    # identical for one random_state
    assert_array_equal(VAE(**SMALL).fit(X).transform(X), Z)


def test_a_wrong_shape_at_transform_names_the_expected_one(digit_images):
    X, _ = digit_images
    vae = VAE(**SMALL).fit(X)
    for bad in (X.reshape(len(X), -1), X[:, :, :7], X[:, 0]):
        with pytest.raises(ValueError, match=r"give X of shape \(n_samples, 1, 8, 8\)"):
            vae.transform(bad)
    with pytest.raises(ValueError, match="images"):
        VAE(**SMALL).fit(np.zeros((10, 2, 3, 4, 5, 6)))
    with pytest.raises(ValueError, match="conv_channels"):
        VAE(**{**SMALL, "conv_channels": (4, 0)}).fit(X)


def test_volumes_in_memory_on_disk_and_in_a_dataset_agree(volumes, tmp_path):
    X, factors = volumes
    path = tmp_path / "volumes.f32"
    X.tofile(path)
    on_disk = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)

    class Volumes(Dataset):
        def __len__(self):
            return len(X)

        def __getitem__(self, i):
            return torch.from_numpy(X[i])

    reference = VAE(**SMALL).fit(X)
    for source in (on_disk, Volumes()):
        vae = VAE(**SMALL).fit(source)
        assert vae.input_shape_ == (1, 9, 11, 7) and vae.history_ == reference.history_
        for method in ("transform", "score_samples"):
            assert_array_equal(getattr(vae, method)(source), getattr(reference, method)(X))
    Z = reference.transform(X)
    assert reference.inverse_transform(Z).shape == X.shape


def test_cvae_on_volumes_with_a_covariate(volumes):
    X, factors = volumes
    age = 50 + 10 * factors[:, :1]
    cvae = CVAE(**SMALL).fit(X, conditions=age)
    Z = cvae.transform(X, conditions=age)
    assert Z.shape == (60, 2)
    assert cvae.inverse_transform(Z[:4], conditions=age[:4] + 5).shape == (4, 1, 9, 11, 7)
    assert cvae.sample(2, conditions=[[40.0], [70.0]]).shape == (4, 1, 9, 11, 7)
    # 1-D ages are one covariate, not one label per subject
    one_d = CVAE(**SMALL).fit(X, conditions=age[:, 0])
    assert not hasattr(one_d, "classes_") and one_d.covariate_mean_.shape == (1,)
    assert_array_equal(one_d.transform(X, conditions=age[:, 0]), Z)
    assert_array_equal(one_d.transform(X[:2], conditions=[50.0, 60.0]).shape, (2, 2))
    # the decoder reads the conditions: decoding one latent under two ages differs
    two = cvae.inverse_transform(np.repeat(Z[:1], 2, 0), conditions=[[30.0], [70.0]])
    assert not np.allclose(two[0], two[1])


def test_a_user_module_reads_batches_of_images_unchanged(digit_images):
    X, _ = digit_images
    encoder = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())  # (B, 1, 8, 8) -> (B, 4, 6, 6)
    decoder = nn.Sequential(
        nn.Linear(2, 4 * 6 * 6), nn.Unflatten(1, (4, 6, 6)), nn.ConvTranspose2d(4, 1, 3)
    )
    vae = VAE(encoder=encoder, decoder=decoder, **SMALL).fit(X)
    assert vae.module_.model.encoder.mu.in_features == 4 * 6 * 6  # encoder_out_dim inferred
    assert vae.inverse_transform(vae.transform(X[:3])).shape == (3, 1, 8, 8)


def test_crmvae_refuses_images_with_a_clear_error(digit_images):
    X, _ = digit_images
    with pytest.raises(ValueError, match="CRMVAE takes X of shape"):
        CRMVAE(max_epochs=1).fit(X)


@pytest.mark.slow
def test_convolutional_latents_recover_age_from_whole_volumes():
    # 300 brains from nilearn's MNI152 template at 6 mm (26 x 32 x 27): the size CI affords
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import cross_val_score

    from nidl_vae.datasets import make_mni_cohort

    X, age, mask, _, _ = make_mni_cohort(300, resolution=6.0)

    def r2(Z):
        return cross_val_score(LinearRegression(), Z, age, cv=5).mean()

    masked = X[:, 0][:, mask]
    pca = r2(PCA(4).fit_transform(masked))
    conv = VAE(latent_dim=4, random_state=0).fit(X)
    mlp = VAE(latent_dim=4, random_state=0).fit(masked)
    assert pca > 0.9  # the planted effect is there to find
    # measured (seed 0, before the encoders centred X and the MLP's widths were 'auto'):
    # convolutional 0.961, MLP on the masked voxels 0.938, PCA 0.932; over seeds 0-4 the
    # convolutional VAE reads 0.928-0.961 (without its decoder's linear path
    # 0.787-0.935), so seed 0 is not the worst case: seeds 3 and 4 read 0.928 and 0.929
    assert r2(conv.transform(X)) >= max(pca, r2(mlp.transform(masked)))
    # 197k parameters against the MLP's 1.1M at hidden_layer_sizes='auto' (64,)
    n_conv, n_mlp = (sum(p.numel() for p in v.module_.parameters()) for v in (conv, mlp))
    assert n_conv < n_mlp / 5
