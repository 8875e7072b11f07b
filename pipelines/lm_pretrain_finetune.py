"""lm-pretrain-finetune: data -> pre-train a scratch (or given) causal LM -> LoRA fine-tune -> merge -> evaluate
(base vs fine-tuned) -> compress (candidates behind a perplexity gate) -> package (the chosen model's Bento) ->
report. Both training steps are placed by the GPU profile."""

from collections.abc import Callable

from kubeforge_components.lm_compress import lm_compress
from kubeforge_components.lm_data import lm_data
from kubeforge_components.lm_evaluate import lm_evaluate
from kubeforge_components.lm_finetune import lm_finetune
from kubeforge_components.lm_package import lm_package
from kubeforge_components.lm_pretrain import lm_pretrain
from kubeforge_components.lm_report import lm_report
from kubeforge_pipelines.params import Params, derived_pipeline, section_args
from kubeforge_pipelines.scheduling import Placement

NAME = "lm-pretrain-finetune"
DESCRIPTION = ("Pre-train a causal LM on a corpus, fine-tune it with LoRA, merge, and evaluate it against its base "
               "on held-out data.")
SECTIONS = ("lm_data", "lm_model", "pretrain", "finetune", "lora", "lm_runtime", "lm_compress")
TRAINING_TASKS = ("lm-pretrain", "lm-finetune")
KIND = "language-model"


def build(placement: Placement) -> Callable:
    def body(p: Params):
        data = lm_data(**section_args(p, "lm_data"))
        splits = data.outputs["lm_splits"]
        pretrained = lm_pretrain(lm_splits=splits, **section_args(p, "lm_model", "lm_data", "pretrain", "lm_runtime"))
        base = pretrained.outputs["pretrained_model"]
        tuned = lm_finetune(lm_splits=splits, pretrained_model=base,
                            **section_args(p, "lm_model", "lm_data", "finetune", "lm_runtime", "lora"))
        scored = lm_evaluate(lm_splits=splits, finetuned_model=tuned.outputs["finetuned_model"], pretrained_model=base,
                             **section_args(p, "lm_model", "lm_data", "lm_runtime"))
        compressed = lm_compress(lm_splits=splits, finetuned_model=tuned.outputs["finetuned_model"],
                                 pretrained_model=base, **section_args(p, "lm_data", "lm_runtime", "lm_compress"))
        compressed.after(scored)
        summary = lm_report(lm_splits=splits, finetuned_model=tuned.outputs["finetuned_model"], pretrained_model=base,
                            lm_evaluation=scored.outputs["lm_evaluation"],
                            compressed_model=compressed.outputs["compressed_model"])
        packaged = lm_package(compressed_model=compressed.outputs["compressed_model"])
        for task, name in ((data, "lm-data"), (pretrained, "lm-pretrain"), (tuned, "lm-finetune"),
                           (scored, "lm-evaluate"), (compressed, "lm-compress"), (packaged, "lm-package"),
                           (summary, "report")):
            task.set_display_name(name)
        for task in (pretrained, tuned):
            placement.training(task)
        for task in (data, scored, compressed, packaged, summary):
            placement.step(task)
        return summary.outputs["run_report"]

    return derived_pipeline(NAME, DESCRIPTION, SECTIONS, body)
