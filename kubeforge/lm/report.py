"""The language-model sections of the run report (kubeforge.report lays them out, as for classifiers)."""

from __future__ import annotations

import html
from typing import Any

from kubeforge.report import Section, figure_to_img, plt, table_html


def data_section(stats: dict[str, Any]) -> Section:
    rows = [(part, split, figures.get("documents", figures.get("examples", "")), figures["characters"])
            for part in ("corpus", "finetune") if part in stats
            for split, figures in ((split, stats[part][split]) for split in ("train", "heldout"))]
    sources = ", ".join(f"{part}: <code>{html.escape(str(stats[part]['source']))}</code>"
                        for part in ("corpus", "finetune") if part in stats)
    body = f"<p>Sources — {sources}. Held-out splits are disjoint by document.</p>"
    return Section("Data", body + table_html(["set", "split", "documents / examples", "characters"], rows))


def training_section(pretrained: dict[str, Any] | None, finetuned: dict[str, Any]) -> Section:
    runs = [(name, record) for name, record in (("pre-training", pretrained), ("fine-tuning", finetuned)) if record]
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.5), squeeze=False)
    rows = []
    for axis, (name, record) in zip(axes[0], runs):
        history = record["history"]
        axis.plot([h["step"] for h in history], [h["loss"] for h in history], label="train loss", alpha=0.7)
        evaluated = [h for h in history if h.get("val_loss") is not None]
        axis.plot([h["step"] for h in evaluated], [h["val_loss"] for h in evaluated], "o-", label="held-out loss")
        axis.set_title(name)
        axis.set_xlabel("optimiser step")
        axis.set_ylabel("loss (nats/token)")
        axis.legend()
        rows.append((name, record["steps_run"], record["best_step"], record["best_val_loss"],
                     record["tokens_per_second"], f"{record['trainable_parameters']:,} / {record['total_parameters']:,}",
                     record["device"]))
    body = table_html(["run", "steps", "best step", "best held-out loss", "tokens/s", "trainable / total parameters",
                       "device"], rows) + figure_to_img(fig, "training and held-out loss curves")
    return Section("Training", body)


def evaluation_section(evaluation: dict[str, Any]) -> Section:
    metrics = ("perplexity", "loss", "next_token_accuracy", "tokens_per_second", "corpus_perplexity")
    rows = [(metric, evaluation["base"].get(metric, "—"), evaluation["finetuned"].get(metric, "—"))
            for metric in metrics if metric in evaluation["base"]]
    verdict = ("beats" if evaluation["beats_base"] else "does not beat")
    body = (f"<p>On {evaluation['heldout_examples']} held-out fine-tuning examples the fine-tuned model {verdict} "
            f"its base: perplexity ratio {evaluation['perplexity_ratio']:.3f}.</p>"
            + table_html(["metric (held-out fine-tuning set)", "base", "fine-tuned"], rows))
    samples = "".join(
        "<tr>" + "".join(f"<td style='text-align:left;white-space:pre-wrap'><code>{html.escape(value)}</code></td>"
                         for value in (c["prompt"], c["reference"], c["base"], c["finetuned"])) + "</tr>"
        for c in evaluation["completions"])
    if samples:
        body += (f"<p>Greedy completions ({evaluation['max_new_tokens']} new tokens at most):</p><table><thead><tr>"
                 "<th>prompt</th><th>reference</th><th>base</th><th>fine-tuned</th></tr></thead>"
                 f"<tbody>{samples}</tbody></table>")
    return Section("Evaluation: base vs fine-tuned", body)


def lm_sections(stats: dict[str, Any], pretrained: dict[str, Any] | None, finetuned: dict[str, Any],
                evaluation: dict[str, Any], compression: dict[str, Any] | None = None) -> list[Section]:
    sections = [data_section(stats), training_section(pretrained, finetuned), evaluation_section(evaluation)]
    if compression is not None:  # the lm-compress step's compression.json
        from kubeforge.compression.lm_report import lm_compression_section

        sections.append(lm_compression_section(compression))
    return sections
