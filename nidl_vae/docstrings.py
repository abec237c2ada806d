"""Documentation of the parameters every estimator shares, written once."""

# filled into the three class docstrings where ``<shared:name>`` stands
SHARED_DOCS = {
    "budget": """batch_size : int or 'auto', default='auto'
        Rows per training step. 'auto' is ``n_samples // 16`` between 16 and 128: about 16
        steps per epoch on a few hundred subjects, 128 rows on larger data.
    max_epochs : int or 'auto', default='auto'
        Passes over the data. 'auto' gives training about 1,000 optimizer steps, at least 100
        and at most 2,000 epochs: 100 epochs of 112 rows on scikit-learn's digits, 100 of 31
        rows (1,700 steps) on 500 subjects, 143 of 16 rows on 100. A fixed number of epochs
        stops short on few subjects (100 epochs of 500 subjects at 128 rows are 400 steps).""",
    "hidden": """hidden_layer_sizes : tuple of int or 'auto', default='auto'
        Widths of the default encoder's hidden layers (the decoder mirrors them). 'auto' is
        (256, 128), and (64,) on wide data, where a sample has more features than there are
        training rows: a decoder's output layer reading h hidden units fits about h/n of each
        feature's noise over n training subjects, and with (256, 128) on 225-240 subjects of
        4,096-8,735 voxels held-out subjects' latents read age worse than PCA's (the training
        guide gives the figures). The choice is ``hidden_layer_sizes_``.""",
    "conv": """conv_channels : tuple of int, default=(8, 16, 32, 64)
        Output channels of the default convolutional encoder's layers, used when X holds
        images (n_samples, C, H, W) or volumes (n_samples, C, D, H, W): each layer is a 3-wide
        convolution of stride 2 (halving every side), group normalisation and a ReLU; layers
        stop before a side would fall below 2 voxels. The input is zero-padded to a multiple
        of :math:`2^L` per side for L layers (91 x 109 x 91 to 96 x 112 x 96) and the mirrored
        decoder of transposed convolutions crops its output back. How well its latents read
        an effect on brain volumes, against PCA and the MLP, is in the training guide
        (``benchmarks/bench_volumes.py``);
        (16, 32, 64, 128) costs about twice the time per epoch.""",
    "train_draws": """n_train_draws : int or 'auto', default='auto'
        Number K of posterior draws per row in training. 1 trains on the ELBO; above 1, on the
        importance-weighted bound (IWAE; MIWAE for data with missing cells), tighter than the
        ELBO and the better imputer, for K times the decoder's work per step. 'auto' is 20
        when the training data have missing cells (NaN), where 20 draws imputed better than
        ``KNNImputer`` and ``IterativeImputer`` and one did not (the likelihoods guide gives
        the figures, ``benchmarks/bench_missing.py``), and 1 otherwise, so complete data
        train as fast as before. The choice is ``n_train_draws_``.

        .. math:: -\\log \\frac1K \\sum_{k=1}^K p(x|z_k)
            \\left[\\frac{p(z_k)}{q(z_k|x)}\\right]^\\beta, \\quad z_k \\sim q(z|x)

        ``history_``'s 'loss' is then this bound, 'reconstruction' the mean over the draws
        and 'kl' the analytic KL.""",
    "linear_path": """linear_path : bool or 'auto', default='auto'
        Give the default decoder a linear map from its input (latents, and conditions) to
        its output besides its hidden layers, :math:`f(z) = g(z) + W_z z`, with
        :math:`W_z` started at zero (``latent_dim`` times ``n_features_in_`` weights, plus a
        column per condition). 'auto' gives it to the convolutional decoder of images and
        volumes and not to the MLP. Measured with 4 latents: on 300 brains built from the
        MNI152 template at 6 mm as volumes (``benchmarks/bench_volumes.py``), the
        convolutional VAE's latents read age at R^2 0.953-0.963 with it over seeds 0-4 (PCA
        0.932) and its decoded change from 30 to 70 years correlates 0.983-0.988 with the
        planted one; without it 0.913-0.942 (median 0.928) and 0.962-0.988: transposed
        convolutions draw shapes anywhere in the volume and spend latents on the subjects'
        smooth variation, while the path draws a fixed pattern per latent, as the planted
        effect is. The training guide gives the MLP's figures.""",
    "training": """stochastic_transform : bool, default=False
        If True, ``transform`` returns one draw from the posterior (seeded, the same at every
        call) instead of its mean.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows, stop when their loss has not improved for
        ``n_iter_no_change`` epochs, and keep the weights of the best epoch.
    validation_fraction : float, default=0.1
        Fraction of the rows held out for early stopping.
    n_iter_no_change : int, default=10
        Epochs without improvement of the held-out loss before early stopping.
    accelerator : str or Accelerator, default='auto'
        Lightning accelerator: 'auto' uses a GPU when there is one.
    devices : int, str or list, default=1
        Lightning devices. Several devices start a distributed strategy; then every process
        calls ``fit`` and the inference methods, and each gets every row, in order.
    precision : str or int, default='32-true'
        Lightning precision of fit and of inference, e.g. '64-true', 'bf16-mixed' (CPUs and
        GPUs), '16-mixed' (GPUs). Inference reads it at each call.
    trainer_params : dict, default=None
        Any other Lightning ``Trainer`` argument (logger, callbacks, strategy,
        gradient_clip_val, default_root_dir, ...), its objects from ``pytorch_lightning`` or
        from ``lightning.pytorch`` (not a mix), for fit and for inference (every method
        runs ``Trainer.predict``). Without ``default_root_dir``, the Trainer's root is a
        temporary directory removed after the call. Fit runs with copies of the callbacks, so
        a refit starts them afresh; inference runs with the callbacks themselves (a
        ``BasePredictionWriter`` gets each batch's ``{"index": positions, "values": ...}``).
    verbose : bool, default=False
        Show a progress bar with the loss in a terminal (and one for inference), and a line
        per epoch (about 20 lines for long budgets) in a log file or notebook. Otherwise
        nothing is printed; Lightning's own messages never are.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling, the validation split, training noise and the
        draws of ``score``, ``log_likelihood``, ``sample`` and a stochastic ``transform``, all
        from generators the estimator owns: global generators are never touched and fits in
        parallel threads give the results of serial fits. None draws fresh entropy.""",
    "input": """X may be an array or DataFrame held in memory, an array that slices rows where it
    lies (``np.memmap``, an h5py or zarr dataset) or a ``torch.utils.data.Dataset`` whose items
    are single samples: data on disk is read a batch of rows at a time, never copied whole.""",
    "images": """A sample is a row of features, or an image (C, H, W) or volume (C, D, H, W) in
    PyTorch's layout: X of shape (n_samples, C, H, W) or (n_samples, C, D, H, W) gets default
    convolutional networks (``conv_channels``), and ``inverse_transform`` and ``sample`` return
    samples of that shape. Images have at most 16 channels: volumes stacked without a channel
    axis, (n_samples, D, H, W), are refused with the fix (``X[:, None]``). NIfTI images or
    their paths are refused with the pipeline to use (nilearn's ``NiftiMasker`` in front).""",
    "attributes": """module_ : VAELightningModule
        The trained LightningModule (eval mode, on the training device); its ``model`` holds
        the math (the networks, the likelihood).
    history_ : dict of list of float
        Per-epoch means of 'loss', 'reconstruction' and 'kl' (nats), and 'val_*' with early
        stopping.
    n_iter_ : int
        Epochs run.
    hidden_layer_sizes_ : tuple of int, or dict of tuple per modality for a CRMVAE
        The default MLPs' hidden widths the fit used (``hidden_layer_sizes`` resolved).
    encoder_reads_mask_ : bool, or dict of bool per modality for a CRMVAE
        Whether the default encoder (a CRMVAE's default expert) reads the mask of missing
        cells beside the values: the training data had NaN cells (in the rows that have the
        modality).
    n_features_in_ : int
        Number of features seen in fit.
    feature_names_in_ : ndarray of str
        Only when X has string column names.""",
}


def fill_shared_docs(cls):
    """Put the shared parameter documentation in a class's docstring."""
    for name, text in SHARED_DOCS.items():
        cls.__doc__ = cls.__doc__.replace(f"<shared:{name}>", text)
    return cls
