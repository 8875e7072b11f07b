import pytest


@pytest.fixture
def kfp_local(tmp_path):
    """kfp's local runner in this interpreter's environment (nothing installed), outputs under tmp_path."""
    from kfp import local

    root = tmp_path / "kfp-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), enable_caching=False)
    return root
