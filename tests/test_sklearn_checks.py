"""scikit-learn's estimator checks, for every estimator.

The checks fit many times on small data, so the estimators run few epochs here; every other
parameter is at its default. Expected failures, if any, are listed in ``EXPECTED_FAILED_CHECKS``
with their reason: that dictionary is the one place they are allowed.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from nidl_vae import VAE

# estimator class name -> {check name: reason}
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {}


def _expected_failed_checks(estimator):
    return EXPECTED_FAILED_CHECKS.get(type(estimator).__name__, {})


@parametrize_with_checks(
    [VAE(max_epochs=3, random_state=0)], expected_failed_checks=_expected_failed_checks
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
