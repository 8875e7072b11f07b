"""kubeforge: the library behind the pipelines. Plain, typed Python; no KFP imports outside kubeforge.orchestration."""

__version__ = "0.1.0"
