"""Showing a CDS service's answer in the terminal as a clinician would roughly see it: one panel per card.

Everything shown comes from the service, possibly a broken or hostile one, so it is rendered from
plain JSON with `.get` and never interpreted as rich markup (only the card detail is rendered, as
the Markdown the spec says it is).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markdown import Markdown
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cds_plugin.sandbox.client import CallResult
from cds_plugin.sandbox.validator import Finding

INDICATOR_STYLES = {"info": "blue", "warning": "yellow", "critical": "bold red"}
INDICATOR_ICONS = {"info": "ℹ", "warning": "⚠", "critical": "‼"}


def _s(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _coding(value: Any) -> str:
    if not isinstance(value, dict):
        return _s(value)
    code = f"{_s(value.get('system'))}|{_s(value.get('code'))}"
    return f"{_s(value.get('display'))} ({code})" if value.get("display") else code


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _action_line(action: Any) -> Text:
    if not isinstance(action, dict):
        return Text(f"      {_s(action)}", style="red")
    line = Text("      ")
    line.append(_s(action.get("type")) or "?", style="bold")
    resource = action.get("resource")
    if isinstance(resource, dict):
        target = _s(resource.get("resourceType")) + (f"/{resource['id']}" if resource.get("id") else "")
        line.append(f" {target}")
    elif action.get("resourceId"):
        line.append(f" {_s(action.get('resourceId'))}")
    if action.get("description"):
        line.append(f" — {_s(action.get('description'))}", style="dim")
    return line


def card_panel(card: Any, index: int) -> Panel:
    """A panel for one card: indicator and summary as title, then detail, source, suggestions, links."""
    if not isinstance(card, dict):
        return Panel(Text(repr(card)), title=f"card {index + 1}: not an object", border_style="red")
    indicator = _s(card.get("indicator"))
    style = INDICATOR_STYLES.get(indicator, "magenta")
    title = Text(
        f"{INDICATOR_ICONS.get(indicator, '?')} {indicator.upper() or 'NO INDICATOR'}  ", style=style
    )
    title.append(_s(card.get("summary")) or "(no summary)", style="bold")
    parts: list[RenderableType] = []
    if isinstance(card.get("detail"), str) and card["detail"]:
        parts.append(Markdown(card["detail"]))
        parts.append(Text(""))
    source = card.get("source")
    if isinstance(source, dict):
        line = Text("Source: ", style="dim")
        line.append(_s(source.get("label")))
        if source.get("url"):
            line.append(f"  {_s(source.get('url'))}", style="underline")
        if source.get("topic"):
            line.append(f"  topic {_coding(source.get('topic'))}", style="dim")
        parts.append(line)
    suggestions = _list(card.get("suggestions"))
    if suggestions:
        behavior = _s(card.get("selectionBehavior")) or "no selectionBehavior"
        parts.append(Text(f"Suggestions ({behavior}):", style="dim"))
        for i, suggestion in enumerate(suggestions, 1):
            item = suggestion if isinstance(suggestion, dict) else {}
            line = Text(f"  {i}. ")
            line.append(_s(item.get("label")) or "(no label)", style="bold")
            if item.get("isRecommended") is True:
                line.append("  ★ recommended", style="green")
            if item.get("uuid"):
                line.append(f"  [{_s(item.get('uuid'))}]", style="dim")
            parts.append(line)
            parts.extend(_action_line(a) for a in _list(item.get("actions")))
    for link in _list(card.get("links")):
        item = link if isinstance(link, dict) else {}
        line = Text("Link: ", style="dim")
        line.append(_s(item.get("label")))
        line.append(f"  {_s(item.get('url'))}", style="underline")
        line.append(f"  ({_s(item.get('type'))})", style="dim")
        if item.get("appContext"):
            line.append("  with appContext", style="dim")
        parts.append(line)
    reasons = _list(card.get("overrideReasons"))
    if reasons:
        parts.append(Text("Override reasons: " + "; ".join(_coding(r) for r in reasons), style="dim"))
    subtitle = Text(f"uuid {_s(card.get('uuid'))}", style="dim") if card.get("uuid") else None
    return Panel(Group(*parts), title=title, title_align="left", subtitle=subtitle, border_style=style)


def render_cards(cards: Iterable[Any], console: Console) -> None:
    cards = list(cards)
    if not cards:
        console.print(Text("No cards: the service has no guidance for this call.", style="dim"))
    for i, card in enumerate(cards):
        console.print(card_panel(card, i))


def render_findings(findings: list[Finding], console: Console) -> None:
    if not findings:
        return
    table = Table(title="Findings", title_justify="left", show_lines=False)
    table.add_column("severity")
    table.add_column("where", overflow="fold")
    table.add_column("rule")
    table.add_column("message", overflow="fold")
    for f in findings:
        style = "red" if f.severity == "error" else "yellow"
        path = f.path if f.document == "response" else f"{f.document}: {f.path}"
        table.add_row(Text(f.severity, style=style), Text(path), Text(f.rule), Text(f.message))
    console.print(table)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def render_call(result: CallResult, console: Console) -> None:
    """Everything about one call: what was sent, the cards, the findings, the verdict, the feedback."""
    service = result.service
    head = Text("Service ", style="dim")
    head.append(_s(service.get("id")), style="bold")
    head.append(f" ({_s(service.get('hook'))})")
    if service.get("title"):
        head.append(f": {_s(service.get('title'))}")
    console.print(head)
    for note in result.notes:
        console.print(Text(note, style="dim"))
    if result.prefetch_notes:
        console.print(
            Text(
                "Prefetch: " + "; ".join(f"{k} = {v}" for k, v in result.prefetch_notes.items()), style="dim"
            )
        )
    exchange = result.response
    status_style = "green" if exchange.status == 200 else "red"
    line = Text(f"POST {exchange.url} → ")
    line.append(str(exchange.status), style=status_style)
    line.append(
        f" {exchange.content_type or '(no content type)'} in {exchange.elapsed_ms:.0f} ms", style="dim"
    )
    console.print(line)
    if exchange.status == 200:
        render_cards(result.cards, console)
        body = exchange.body
        for action in _list(body.get("systemActions") if isinstance(body, dict) else None):
            console.print(Text("System action:", style="dim"), _action_line(action))
    elif exchange.body:
        shown = exchange.body if isinstance(exchange.body, str) else json.dumps(exchange.body, indent=2)
        console.print(Text(shown[:2000], style="dim"))
    render_findings(result.findings, console)
    errors = _count(sum(1 for f in result.findings if f.severity == "error"), "error")
    warnings = _count(sum(1 for f in result.findings if f.severity == "warning"), "warning")
    if result.conforms:
        console.print(Text(f"✔ The answer conforms to CDS Hooks 2.0 ({warnings}).", style="green"))
    else:
        console.print(Text(f"✘ The answer breaks CDS Hooks 2.0: {errors}, {warnings}.", style="red"))
    if result.feedback is not None:
        console.print(Text(f"Feedback on the first card: {result.feedback.note}"))
