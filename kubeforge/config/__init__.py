"""The one validated configuration model.

Every tunable setting is defined exactly once here. The CLI's ``--param key=value``, the KFP pipeline parameters and
the Helm chart values are all derived from these models, so a default or a bound cannot drift between them.
``kubeforge.config`` re-exports everything; the modules split it by concern: ``base`` (error, section base,
patterns), ``sections`` (classifier, serving, cluster, distributed), ``language`` (causal LMs), ``run`` (the whole run
and its flat parameters), ``platform`` (scheduling profiles, the platform file, submission).
"""

from kubeforge.config.base import (DNS_LABEL, DNS_LABEL_PATTERN, IMAGE_REFERENCE, ConfigError, EnvSection, _Section,
                                   describe_validation_error)
from kubeforge.config.language import (FINETUNE_DEFAULTS, LM_COMPRESSION_METHODS, MODEL_SOURCE_HELP, PRETRAIN_DEFAULTS,
                                       SCRATCH_PRESETS, LMCompressConfig, LMDataConfig, LMModelConfig, LMRuntimeConfig, LMTrainConfig, LoRAConfig)
from kubeforge.config.platform import (IMAGE_ENV, PLATFORM_FILE_ENV, PlatformConfig, SchedulingProfile, SubmitConfig,
                                       Toleration, load_platform, runtime_image)
from kubeforge.config.run import FlatField, RunConfig, parse_param_assignments
from kubeforge.config.sections import (BUNDLED_DATASETS, COMPRESSION_METHODS, ClusterConfig, CompressConfig,
                                       DataConfig, DistributedConfig, ModelConfig, ServeConfig, TrainConfig)

__all__ = [name for name in dir() if not name.startswith("__")]
