"""KFP components: thin typed wrappers (artifacts in -> one kubeforge call -> artifacts, Metrics, Markdown out).

Every component runs in one project image that has kubeforge installed, so bodies only import kubeforge and install
nothing at run time. Locally, kfp's SubprocessRunner(use_venv=False) runs them in the current interpreter.
"""

import os

from kubeforge.config import load_platform

IMAGE_ENV = "KUBEFORGE_IMAGE"


def runtime_image() -> str:
    """The project image the components run in: $KUBEFORGE_IMAGE, else the platform file's image."""
    return os.environ.get(IMAGE_ENV) or load_platform().image


RUNTIME_IMAGE = runtime_image()
