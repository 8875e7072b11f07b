"""What the lm-compress step shows: a Markdown table (KFP UI), flat Metrics, and the report section with the
trade-off plot (perplexity vs decode speed, marker area ~ size on disk), in the classifier's layout."""

from __future__ import annotations

from typing import Any


def _rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [report["baseline"], *report["candidates"]]


def _verdict(row: dict[str, Any]) -> str:
    return {True: "pass", False: "fail", None: "—"}[row.get("passed")]


def lm_compression_markdown(report: dict[str, Any]) -> str:
    chosen = report["chosen"] or "none (gate failed)"
    work = report["workload"]
    lines = ["# Language-model compression", "",
             f"Gate: held-out perplexity at most {report['max_perplexity_increase']} % higher and greedy agreement "
             f"at least {report['min_greedy_agreement']} (first {work['agreement_tokens']} tokens of "
             f"{work['prompts']} held-out prompts); objective: {report['objective']}. Chosen: **{chosen}**.", "",
             "| candidate | gate | format | perplexity | change % | agreement | size KiB | size × | params | "
             "tok/s b1 | tok/s b8 | ms/token b1 | TTFT ms |", "| --- " * 13 + "|"]
    for m in _rows(report):
        lines.append(f"| {m['name']} | {_verdict(m)} | {m['kind']} {m['precision']} | {m['perplexity']:.3f} | "
                     f"{m['perplexity_increase_pct']:+.2f} | {m['greedy_agreement']:.3f} | "
                     f"{m['size_bytes'] / 1024:.1f} | {m['size_ratio']:.2f} | {m['parameters']:,} | "
                     f"{m['decode_tokens_s_b1']:,.1f} | {m['decode_tokens_s_b8']:,.1f} | {m['ms_per_token_b1']:.3f} | "
                     f"{m['ttft_ms']:.2f} |")
    lines += ["", "Notes:"] + [f"- {m['name']}: {'; '.join(m['notes'])}" for m in report["candidates"]]
    env = report["environment"]
    lines += ["", f"Decode: {work['decode_steps']} steps after the prompt, TTFT: a {work['ttft_prompt_tokens']}-token "
              f"prompt; {work['threads']} thread(s), the fastest of {work['rounds']} round(s) (median step within "
              "each). Measured on "
              f"{env['cores']} cores, CPU flags {', '.join(env['cpu_flags']) or 'none'}; "
              + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + "."]
    return "\n".join(lines) + "\n"


def _key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def lm_compression_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat numbers for the KFP Metrics artifact."""
    metrics: dict[str, float] = {}
    for m in _rows(report):
        key = _key(m["name"])
        metrics[f"{key}_perplexity"] = round(m["perplexity"], 4)
        metrics[f"{key}_greedy_agreement"] = m["greedy_agreement"]
        metrics[f"{key}_size_ratio"] = m["size_ratio"]
        metrics[f"{key}_decode_tokens_s_b1"] = round(m["decode_tokens_s_b1"], 1)
    chosen = next((m for m in report["candidates"] if m["name"] == report["chosen"]), None)
    if chosen:
        base = report["baseline"]
        metrics.update(chosen_perplexity=round(chosen["perplexity"], 4),
                       chosen_perplexity_increase_pct=chosen["perplexity_increase_pct"],
                       chosen_greedy_agreement=chosen["greedy_agreement"], chosen_size_ratio=chosen["size_ratio"],
                       chosen_decode_tokens_s_b1=round(chosen["decode_tokens_s_b1"], 1),
                       chosen_decode_tokens_s_b8=round(chosen["decode_tokens_s_b8"], 1),
                       chosen_decode_speedup_b1=round(chosen["decode_tokens_s_b1"] / base["decode_tokens_s_b1"], 3),
                       chosen_ttft_ms=round(chosen["ttft_ms"], 3))
    return metrics


def lm_compression_section(report: dict[str, Any]):
    """Perplexity vs decode tokens/s at batch 1, marker area ~ size on disk (red: chosen); the table beneath."""
    from kubeforge.report import Section, figure_to_img, plt, table_html

    rows = _rows(report)
    fig, axis = plt.subplots(figsize=(7, 4))
    biggest = max(m["size_bytes"] for m in rows)
    span_x = (max(m["decode_tokens_s_b1"] for m in rows) - min(m["decode_tokens_s_b1"] for m in rows)) or 1.0
    span_y = (max(m["perplexity"] for m in rows) - min(m["perplexity"] for m in rows)) or 1.0
    placed: list[tuple[float, float]] = []
    for m in rows:
        x, y = m["decode_tokens_s_b1"], m["perplexity"]
        color = "tab:red" if m["name"] == report["chosen"] else ("tab:gray" if m.get("passed") is False
                                                                 else "tab:blue")
        axis.scatter(x, y, s=40 + 800 * m["size_bytes"] / biggest, alpha=0.6, edgecolors="black", color=color)
        crowd = sum(abs(x - px) < 0.15 * span_x and abs(y - py) < 0.08 * span_y for px, py in placed)
        axis.annotate(m["name"], (x, y), fontsize=8, xytext=(6, 6 - 11 * crowd), textcoords="offset points")
        placed.append((x, y))
    axis.margins(x=0.15, y=0.15)
    axis.set_xlabel("decode tokens/s at batch 1")
    axis.set_ylabel("held-out perplexity")
    axis.set_title("perplexity vs decode speed (area ~ size on disk; red = chosen, grey = failed the gate)")
    table = table_html(["candidate", "gate", "format", "perplexity", "change %", "agreement", "size ×", "params",
                        "tok/s b1", "tok/s b8", "TTFT ms"],
                       [(m["name"], _verdict(m), f"{m['kind']} {m['precision']}", round(m["perplexity"], 3),
                         m["perplexity_increase_pct"], m["greedy_agreement"], m["size_ratio"], m["parameters"],
                         round(m["decode_tokens_s_b1"], 1), round(m["decode_tokens_s_b8"], 1), round(m["ttft_ms"], 2))
                        for m in rows])
    chosen = report["chosen"] or "none (gate failed)"
    body = (f"<p>Chosen: <b>{chosen}</b> (objective {report['objective']}; at most "
            f"{report['max_perplexity_increase']} % perplexity increase, greedy agreement at least "
            f"{report['min_greedy_agreement']}). Every figure was measured on the saved directory through the "
            "inference module the service loads it with.</p>" + figure_to_img(fig, "LM compression trade-off") + table)
    return Section("Compression", body)
