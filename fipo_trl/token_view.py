"""
Token influence view: one training completion as HTML, every token coloured by its FIPO influence weight f_t.

Red tokens had their advantage amplified (f_t > 1: the policy has since moved on the tokens after them), blue ones
damped (f_t < 1), white ones left alone (f_t = 1, e.g. on the first, on-policy optimizer step of a generation batch).
Hovering a token shows f_t and its log-ratio Δ_t = log π_θ − log π_old.

This module renders the page; `fipo_trl.callbacks.TokenViewCallback` writes one at each logging step of a run.
"""

import html


def weight_colour(weight, lower, upper):
    """CSS colour of a weight: white at 1, shading to red at `upper` and to blue at `lower` (clamped beyond)."""
    if weight >= 1:
        strength = min((weight - 1) / (upper - 1), 1.0) if upper > 1 else 0.0
        channel = round(255 * (1 - strength))
        return f"rgb(255,{channel},{channel})"
    strength = min((1 - weight) / (1 - lower), 1.0) if lower < 1 else 0.0
    channel = round(255 * (1 - strength))
    return f"rgb({channel},{channel},255)"


def render_token_view(
    tokens, weights, log_ratios, advantage, weight_range=(0.8, 1.2), title="FIPO token influence", prompt=None
):
    """
    Render one completion as a standalone HTML page.

    Args:
        tokens (`list[str]`):
            The completion's tokens as text, one entry per token.
        weights (`list[float]`):
            Influence weights f_t, same length as `tokens`.
        log_ratios (`list[float]`):
            Log-ratios Δ_t, same length as `tokens` (shown on hover).
        advantage (`float`):
            The completion's advantage A (the sign says whether f_t amplified a reward or a penalty).
        weight_range (`tuple[float, float]`, *optional*, defaults to `(0.8, 1.2)`):
            Weights mapped to full blue and full red.
        title (`str`, *optional*):
            Heading of the page.
        prompt (`str`, *optional*):
            The prompt the completion answers, shown above it.

    Returns:
        `str`: the HTML document.
    """
    if not len(tokens) == len(weights) == len(log_ratios):
        raise ValueError(
            f"tokens, weights and log_ratios differ in length: {len(tokens)}, {len(weights)}, {len(log_ratios)}"
        )
    lower, upper = weight_range
    spans = []
    for i, (token, weight, log_ratio) in enumerate(zip(tokens, weights, log_ratios, strict=True)):
        text = html.escape(token).replace("\n", "↵<br>").replace(" ", "&nbsp;") or "&#8203;"
        tip = f"#{i} {token!r}  f={weight:.4f}  Δ={log_ratio:+.4g}"
        spans.append(
            f'<span class="t" style="background:{weight_colour(weight, lower, upper)}" '
            f'title="{html.escape(tip, quote=True)}">{text}</span>'
        )
    mean_weight = sum(weights) / len(weights) if weights else float("nan")
    max_abs_delta = max((abs(x) for x in log_ratios), default=float("nan"))
    stats = (
        f"A = {advantage:+.3f} &middot; {len(tokens)} tokens &middot; mean f = {mean_weight:.4f} &middot; "
        f"max |Δ| = {max_abs_delta:.3g}"
    )
    legend = (
        f'<span class="t" style="background:{weight_colour(lower, lower, upper)}">f={lower:g}</span> '
        '<span class="t" style="background:#fff;border:1px solid #ccc">f=1</span> '
        f'<span class="t" style="background:{weight_colour(upper, lower, upper)}">f={upper:g}</span>'
    )
    prompt_block = "" if prompt is None else f'<pre class="c">{html.escape(prompt)}</pre>'
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1.5em;max-width:60em}"
        ".t{font-family:monospace;font-size:1.05em;padding:1px 0;white-space:pre-wrap}"
        ".c{line-height:1.9;border:1px solid #ddd;padding:0.8em}</style></head><body>"
        f"<h3>{html.escape(title)}</h3>{prompt_block}<p>{stats}</p>"
        f"<p>{legend} &mdash; hover a token for f<sub>t</sub> and "
        f'Δ<sub>t</sub></p><div class="c">{"".join(spans)}</div></body></html>\n'
    )
