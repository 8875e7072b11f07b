# The model the serving tests serve, for the benchmarks' tests.
from tests.kubeforge.conftest import digits  # noqa: F401
from tests.kubeforge.serving.conftest import served_model_dir  # noqa: F401
