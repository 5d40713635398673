"""The report's sections on what the attention heads look at and how the models read the start
of a text (``python -m training heads`` and ``starts``), in Markdown."""

from __future__ import annotations

from typing import Any

from training.heads import format_table as heads_table


def _most(model: dict[str, Any], stat: str) -> tuple[float, int, int]:
    """The largest of a head statistic, with its layer and head."""
    return max(
        (model[stat][layer][head], layer, head)
        for layer in range(model["layers"])
        for head in range(model["heads"])
    )


def heads_section(heads: dict[str, Any]) -> list[str]:
    heading = ["## What the attention heads look at", ""]
    command = (
        f"`python -m training heads --split {heads['split']} --windows {heads['windows']} "
        f"--json {heads['file']}`"
    )
    if heads["stale"]:
        return [
            *heading,
            f"Measured on weights since replaced ({', '.join(heads['stale'])}): rerun {command}.",
            "",
        ]
    lines = [
        *heading,
        f"Each head's weights over {heads['windows']} windows of its model's context, laid "
        f"evenly over the {heads['split']} split, at the queries of a window's second half (each "
        "sees at least half a window). A cell gives how many tokens back the weight lands on "
        "average · the weights' entropy in bits · the share on the previous token. Weights spread "
        "evenly over everything a query may see would land about half its context back, with the "
        "most entropy (the first line under each table): a head near that averages its context "
        "like a bag of words; a head with little entropy picks a few tokens.",
        "",
    ]
    for name, model in heads["models"].items():
        even = model["uniform"]
        many = model["layers"] * model["heads"] > 1
        layers = f"{model['layers']} layer{'s' if model['layers'] > 1 else ''}"
        count = f"{model['heads']} head{'s' if model['heads'] > 1 else ''}"
        lines += [
            f"### `{name}` ({layers}, {count}, context {model['context']})",
            "",
            heads_table(heads, name),
            "",
            f"- Spread evenly: {even['distance']:.1f} tokens back, {even['entropy_bits']:.1f} "
            "bits.",
        ]
        if many:
            by_layer = [sum(row) / len(row) for row in model["distance"]]
            far = _most(model, "distance")
            near = min(
                (model["distance"][layer][head], layer, head)
                for layer in range(model["layers"])
                for head in range(model["heads"])
            )
            lines.append(
                "- Mean distance by layer: "
                + ", ".join(f"{layer}: {d:.1f}" for layer, d in enumerate(by_layer))
                + f" tokens. Farthest head: layer {far[1]}, head {far[2]} ({far[0]:.1f} tokens "
                f"back); nearest: layer {near[1]}, head {near[2]} ({near[0]:.1f})."
            )
        previous, own = _most(model, "previous"), _most(model, "self")
        where = (lambda m: f"layer {m[1]}, head {m[2]}, ") if many else (lambda m: "")
        lines += [
            f"- Most weight on the previous token: {where(previous)}{previous[0]:.0%}; on the "
            f"query's own token: {where(own)}{own[0]:.0%}.",
            "",
            f"![attention maps of {name}](heads-{name}.png)",
            "",
        ]
    tokens = {name: len(model["example"]["tokens"]) for name, model in heads["models"].items()}
    lines += [
        f"The maps are those of one sentence, «{heads['example']}», read after an end-of-text "
        "token as the service reads a prompt ("
        + ", ".join(
            f"`{name}`: {count} tokens"
            if count == max(tokens.values())
            else f"`{name}`: the last {count}, its context"
            for name, count in tokens.items()
        )
        + "): a row per query, its weights along the row. ONNX Runtime on the CPU "
        f"({heads['cpu']}), {heads['seconds']:.0f} s. Measured by {command}.",
        "",
    ]
    return lines


def starts_section(starts: dict[str, Any]) -> list[str]:
    """Bits per character at a text's first tokens, read alone after end-of-text (as the
    service reads a prompt) and after the text before them (`python -m training starts`)."""
    from training.starts import format_table

    if starts["stale"]:
        return [
            "## The start of a text",
            "",
            f"`{starts['file']}` was measured on weights since replaced "
            f"({', '.join(starts['stale'])}): run `{starts['command']}` again.",
            "",
        ]
    models = starts["models"]

    def best(condition: str, position: str) -> str:
        name = min(models, key=lambda n: models[n][condition][position]["bits_per_character"])
        return f"`{name}`"

    lines = [
        "## The start of a text",
        "",
        f"The service reads every prompt as the start of a document, after an end-of-text "
        f"token. {starts['texts']:,} texts: the {starts['rule']}, on the {starts['split']} "
        f"split. Bits per character of the tokens at each position, alone / in context "
        f"(`{starts['command']}`):",
        "",
        format_table(starts),
        "",
        f"Lowest at the first token: {best('start', '1')} alone, {best('in_context', '1')} in "
        f"context; at tokens 2-4: {best('start', '2-4')} alone, {best('in_context', '2-4')} in "
        "context. What a model loses alone against in context is what starting a text cold "
        "costs it.",
        "",
    ]
    return lines
