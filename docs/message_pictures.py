"""Pictures of figrelay's messages for docs/messages.md: small HTML imitations of Slack's client
(Block Kit), of Teams' card renderer (Adaptive Cards) and of a mail client's frame around the HTML
part, screenshotted with headless Chromium.

Used by ``docs/render_messages.py --pictures``, which hands over exactly what the plugins sent.
The pictures are approximations (Slack and Teams use their own fonts, emoji and spacing); the
payloads beside them are exact, and the docs test compares those, not the pictures.

Needs, only when run: Chromium, an emoji font and the fonts the pages name (``apt-get install
chromium fonts-noto-color-emoji fonts-liberation fonts-lato``: Liberation Sans stands in for Segoe
UI and Arial, Lato is Slack's typeface; without them the text falls back to wider fonts) and
Pillow in the venv (``.venv/bin/pip install pillow``) to crop each screenshot to its content. The
pages use no network.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

WIDTH = 720
MAX_HEIGHT = 3000
BACKDROP = (255, 0, 255)
"""The colour outside the drawn page (never used inside it): what the crop removes."""
TIME = "12:35 PM"
DATE = "Sun, 1 Jun 2025, 12:35"
"""The time the pictures show, as the sample events' (2025-06-01 12:34:56 UTC)."""


class PicturesUnavailable(Exception):
    """Chromium or Pillow is missing; the message says how to install it."""


# --- page scaffolding -----------------------------------------------------------------------------

EMOJI_FONTS = '"Noto Color Emoji", "Apple Color Emoji", "Segoe UI Emoji"'


def page(body: str, css: str, background: str) -> str:
    backdrop = "#{:02X}{:02X}{:02X}".format(*BACKDROP)
    return (
        '<!DOCTYPE html>\n<html lang="en" style="background:' + backdrop + '"><head><meta charset="utf-8"><style>\n'
        f"body{{margin:0}} #page{{background:{background};overflow:hidden}}\n{css}\n</style></head>\n"
        f'<body><div id="page">\n{body}\n</div></body></html>\n'
    )


def esc(text: str) -> str:
    return html.escape(text, quote=True)


# --- Slack: Block Kit as Slack's desktop client shows it -----------------------------------------

SLACK_CSS = f"""
#page {{ padding: 12px 20px 14px 20px; font: 15px/1.46668 Lato, "Slack-Lato", "Helvetica Neue", Helvetica, Arial, sans-serif, {EMOJI_FONTS};
        color: #1D1C1D; }}
.msg {{ display: flex; gap: 8px; }}
.avatar {{ flex: 0 0 36px; height: 36px; border-radius: 6px; background: #4A154B; color: #fff; font-weight: 900; font-size: 17px;
           display: flex; align-items: center; justify-content: center; margin-top: 3px; }}
.content {{ flex: 1 1 auto; min-width: 0; }}
.meta {{ line-height: 22px; }}
.name {{ font-weight: 900; }}
.app {{ font-size: 10px; font-weight: 700; color: rgba(29,28,29,.7); background: rgba(29,28,29,.13); border-radius: 2px;
        padding: 1px 3px; margin-left: 4px; vertical-align: 2px; }}
.time {{ font-size: 12px; color: #616061; margin-left: 6px; }}
.block {{ margin: 4px 0; overflow-wrap: anywhere; }}
.header {{ font-size: 18px; line-height: 1.33; font-weight: 900; margin: 6px 0 4px 0; }}
.fields {{ display: grid; grid-template-columns: 1fr 1fr; column-gap: 16px; row-gap: 8px; margin-top: 8px; }}
.context {{ display: flex; flex-wrap: wrap; align-items: center; gap: 4px 10px; font-size: 13px; line-height: 1.38; color: #616061; margin-top: 6px; }}
.context a {{ color: #1264A3; }}
a {{ color: #1264A3; text-decoration: none; }}
code {{ font: 12px Monaco, Menlo, Consolas, "Courier New", monospace; color: #E01E5A; background: rgba(29,28,29,.04);
        border: 1px solid rgba(29,28,29,.13); border-radius: 3px; padding: 2px 3px 1px; }}
pre {{ font: 12px/1.5 Monaco, Menlo, Consolas, monospace; background: rgba(29,28,29,.04); border: 1px solid rgba(29,28,29,.13);
       border-radius: 4px; padding: 8px; margin: 4px 0; white-space: pre-wrap; }}
blockquote {{ margin: 0; padding-left: 12px; border-left: 4px solid #DDDDDD; }}
.attachment {{ display: flex; margin-top: 6px; }}
.bar {{ flex: 0 0 4px; border-radius: 8px; }}
.attachment-body {{ flex: 1 1 auto; min-width: 0; padding: 2px 0 2px 12px; }}
.divider {{ border-top: 1px solid rgba(29,28,29,.13); margin: 8px 0; }}
.button {{ display: inline-block; font-size: 13px; font-weight: 700; border: 1px solid rgba(29,28,29,.3); border-radius: 4px;
           padding: 3px 12px; margin-right: 8px; }}
.button.primary {{ background: #007A5A; color: #fff; border-color: #007A5A; }}
.button.danger {{ color: #E01E5A; }}
.unsupported {{ border: 1px dashed #E01E5A; color: #E01E5A; font-size: 12px; padding: 4px 8px; }}
"""

_SLACK_NAMED_COLOURS = {"good": "#2EB67D", "warning": "#ECB22E", "danger": "#E01E5A"}
_SLACK_SPECIAL = re.compile(r"<([^<>\s|]+)(?:\|([^<>]*))?>")
_SLACK_CODE_BLOCK = re.compile(r"```(.+?)```", re.DOTALL)
_SLACK_CODE = re.compile(r"`([^`\n]+)`")
_SLACK_BARE_URL = re.compile(r"https?://[^\s<>\"']+[^\s<>\"'.,;:!?)]")
_SLACK_STYLES = [
    (re.compile(r"(?<![\w*])\*(?=\S)([^*\n]*?\S)\*(?![\w*])|(?<![\w*])\*(\S)\*(?![\w*])"), "b"),
    (re.compile(r"(?<![\w_])_(?=\S)([^_\n]*?\S)_(?![\w_])|(?<![\w_])_(\S)_(?![\w_])"), "i"),
    (re.compile(r"(?<![\w~])~(?=\S)([^~\n]*?\S)~(?![\w~])|(?<![\w~])~(\S)~(?![\w~])"), "s"),
]


def _slack_unescape(text: str) -> str:
    """Slack's three entities back to characters (mrkdwn arrives with &, < and > escaped)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


class _Held:
    """HTML fragments kept out of later rewriting, behind placeholders."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def __call__(self, fragment: str) -> str:
        self.parts.append(fragment)
        return f"\x00{len(self.parts) - 1}\x00"

    def restore(self, text: str) -> str:
        while "\x00" in text:
            text = re.sub(r"\x00(\d+)\x00", lambda m: self.parts[int(m[1])], text)
        return text


def _slack_styles(text: str, held: _Held | None = None) -> str:
    """Bold, italic and strike-through in escaped text; bare URLs become links, as Slack's client does."""
    if held is not None:
        text = _SLACK_BARE_URL.sub(lambda m: held(f'<a href="{m[0]}">{m[0]}</a>'), text)
    for pattern, tag in _SLACK_STYLES:
        text = pattern.sub(lambda m, tag=tag: f"<{tag}>{m[1] or m[2]}</{tag}>", text)
    return text


def slack_mrkdwn(text: str) -> str:
    """Slack mrkdwn as HTML: *bold*, _italic_, ~strike~, `code`, ```pre```, <url|label> links,
    <@user>/<#channel>/<!here> mentions, > quotes and line breaks."""
    held = _Held()
    text = _SLACK_CODE_BLOCK.sub(lambda m: held(f"<pre>{esc(_slack_unescape(m[1]).strip(chr(10)))}</pre>"), text)
    text = _SLACK_CODE.sub(lambda m: held(f"<code>{esc(_slack_unescape(m[1]))}</code>"), text)

    def special(m: re.Match[str]) -> str:
        target, label = m[1], m[2]
        if target.startswith("@"):
            return held(f'<a class="mention">@{esc(label or target[1:])}</a>')
        if target.startswith("#"):
            return held(f"<a>#{esc(label or target[1:])}</a>")
        if target.startswith("!"):
            return held(f"<b>@{esc(label or target[1:].split('^')[0])}</b>")
        shown = _slack_styles(esc(_slack_unescape(label))) if label else esc(_slack_unescape(target))
        return held(f'<a href="{esc(_slack_unescape(target))}">{shown}</a>')

    text = _SLACK_SPECIAL.sub(special, text)
    lines = []
    quote: list[str] = []
    for line in _slack_unescape(text).split("\n"):
        if line.startswith(">"):
            quote.append(_slack_styles(esc(line[1:].removeprefix(" ")), held))
            continue
        if quote:
            lines.append("<blockquote>" + "<br>".join(quote) + "</blockquote>")
            quote = []
        lines.append(_slack_styles(esc(line), held))
    if quote:
        lines.append("<blockquote>" + "<br>".join(quote) + "</blockquote>")
    joined = re.sub(r"(</blockquote>)<br>", r"\1", "<br>".join(lines))
    return held.restore(joined)


def slack_text(obj: dict[str, Any]) -> str:
    """A Block Kit text object."""
    if obj.get("type") == "mrkdwn":
        return slack_mrkdwn(obj.get("text", ""))
    return esc(obj.get("text", "")).replace("\n", "<br>")


def slack_element(element: dict[str, Any]) -> str:
    kind = element.get("type")
    if kind in ("mrkdwn", "plain_text"):
        return f"<span>{slack_text(element)}</span>"
    if kind == "image":
        return f'<span class="unsupported">[image: {esc(element.get("alt_text", ""))}]</span>'
    if kind == "button":
        style = element.get("style", "")
        return f'<span class="button {esc(style)}">{slack_text(element.get("text", {}))}</span>'
    return f'<span class="unsupported">[{esc(str(kind))} not drawn by this preview]</span>'


def slack_block(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "header":
        return f'<div class="block header">{slack_text(block["text"])}</div>'
    if kind == "section":
        parts = []
        if "text" in block:
            parts.append(f"<div>{slack_text(block['text'])}</div>")
        if "fields" in block:
            parts.append('<div class="fields">' + "".join(f"<div>{slack_text(f)}</div>" for f in block["fields"]) + "</div>")
        accessory = f'<div style="margin-left:12px">{slack_element(block["accessory"])}</div>' if "accessory" in block else ""
        inner = "".join(parts)
        return f'<div class="block" style="display:flex"><div style="flex:1 1 auto;min-width:0">{inner}</div>{accessory}</div>'
    if kind == "context":
        return '<div class="block context">' + "".join(slack_element(e) for e in block.get("elements", [])) + "</div>"
    if kind == "divider":
        return '<div class="divider"></div>'
    if kind == "actions":
        return '<div class="block">' + "".join(slack_element(e) for e in block.get("elements", [])) + "</div>"
    return f'<div class="block unsupported">[{esc(str(kind))} block not drawn by this preview]</div>'


def slack_attachment(attachment: dict[str, Any]) -> str:
    colour = attachment.get("color", "#DDDDDD")
    colour = _SLACK_NAMED_COLOURS.get(colour, colour if colour.startswith("#") else f"#{colour}")
    parts = []
    if "pretext" in attachment:
        parts.append(f'<div class="block">{slack_mrkdwn(attachment["pretext"])}</div>')
    if "title" in attachment:
        parts.append(f'<div class="block"><b>{esc(attachment["title"])}</b></div>')
    if "text" in attachment:
        parts.append(f'<div class="block">{slack_mrkdwn(attachment["text"])}</div>')
    parts += [slack_block(b) for b in attachment.get("blocks", [])]
    return f'<div class="attachment"><div class="bar" style="background:{esc(colour)}"></div><div class="attachment-body">{"".join(parts)}</div></div>'


def slack_page(payload: dict[str, Any]) -> str:
    blocks = payload.get("blocks")
    body = "".join(slack_block(b) for b in blocks) if blocks else f'<div class="block">{slack_mrkdwn(payload.get("text", ""))}</div>'
    body += "".join(slack_attachment(a) for a in payload.get("attachments", []))
    name = esc(payload.get("username", "figrelay"))
    return page(
        f'<div class="msg"><div class="avatar">f</div><div class="content">'
        f'<div class="meta"><span class="name">{name}</span><span class="app">APP</span><span class="time">{TIME}</span></div>'
        f"{body}</div></div>",
        SLACK_CSS,
        "#FFFFFF",
    )


# --- Teams: an Adaptive Card as Teams (light theme) shows it -------------------------------------

SPACING = {"none": 0, "small": 4, "default": 8, "medium": 16, "large": 24, "extralarge": 32, "padding": 16}
FONT_SIZES = {"small": 12, "default": 14, "medium": 18, "large": 24, "extralarge": 32}
FONT_WEIGHTS = {"lighter": 300, "default": 400, "bolder": 600}
COLOURS = {  # (default, subtle)
    "default": ("#242424", "#616161"),
    "dark": ("#242424", "#616161"),
    "light": ("#FFFFFF", "#F5F5F5"),
    "accent": ("#5B5FC7", "#7F85F5"),
    "good": ("#237B4B", "#4F9E6F"),
    "warning": ("#835C00", "#A57A1A"),
    "attention": ("#C4314B", "#D65A70"),
}
CONTAINER_BACKGROUNDS = {"default": "#FFFFFF", "emphasis": "#F5F5F5", "accent": "#E8EBFA", "good": "#E7F2DA", "attention": "#FCF4F6",
                         "warning": "#FBF6D9"}

TEAMS_CSS = f"""
#page {{ padding: 20px 24px; font: 14px/1.43 "Segoe UI", "Segoe UI Web (West European)", -apple-system, "Helvetica Neue",
        "Liberation Sans", Arial, sans-serif, {EMOJI_FONTS}; color: #242424; }}
.post {{ display: flex; gap: 12px; align-items: flex-start; }}
.avatar {{ flex: 0 0 32px; height: 32px; border-radius: 50%; background: #5B5FC7; color: #fff; font-weight: 600;
           display: flex; align-items: center; justify-content: center; font-size: 14px; }}
.bubble {{ flex: 1 1 auto; min-width: 0; background: #FFFFFF; border-radius: 6px; box-shadow: 0 1px 2px rgba(0,0,0,.14), 0 0 2px rgba(0,0,0,.12);
           padding: 10px 16px 16px 16px; }}
.meta {{ font-size: 12px; line-height: 16px; color: #616161; margin-bottom: 8px; }}
.meta b {{ color: #242424; font-weight: 600; margin-right: 8px; }}
.card {{ border: 1px solid #E0E0E0; border-radius: 4px; padding: 16px; overflow: hidden; }}
.card.narrow {{ max-width: 450px; }}
.ac-text {{ overflow-wrap: anywhere; }}
.ac-text p {{ margin: 0; }}
.ac-text p + p, .ac-text p + ul, .ac-text ul + p {{ margin-top: 8px; }}
.ac-text ul, .ac-text ol {{ margin: 0; padding-left: 20px; }}
.ac-text a {{ color: #5B5FC7; text-decoration: none; }}
.ac-facts {{ border-collapse: collapse; width: 100%; }}
.ac-facts td {{ padding: 0 0 2px 0; vertical-align: top; overflow-wrap: anywhere; }}
.ac-facts td.title {{ font-weight: 600; width: 1%; padding-right: 16px; }}
.ac-facts td.title div {{ width: max-content; max-width: 150px; }}
.ac-actions {{ display: flex; flex-wrap: wrap; gap: 8px; }}
.ac-button {{ display: inline-flex; align-items: center; justify-content: center; min-height: 32px; padding: 0 12px; border: 1px solid #D1D1D1;
              border-radius: 4px; font-weight: 600; background: #FFFFFF; color: #242424; box-sizing: border-box; }}
.ac-image {{ display: inline-flex; align-items: center; justify-content: center; background: #EBEBEB; color: #616161; font-size: 11px; }}
.unsupported {{ border: 1px dashed #C4314B; color: #C4314B; font-size: 12px; padding: 4px 8px; }}
"""

_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")
_MD_STYLES = [
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__"), "strong"),
    (re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])|(?<![\w_])_(?=\S)(.+?)(?<=\S)_(?![\w_])"), "em"),
]
_MD_BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
_MD_NUMBER = re.compile(r"^\s*\d+\.\s+(.*)$")


def md_inline(text: str) -> str:
    """The markdown subset Teams reads in a TextBlock or a fact, as HTML: backslash escapes,
    **bold**, _italic_ / *italic* and [label](url) links."""
    held = _Held()
    text = _MD_ESCAPE.sub(lambda m: held(esc(m[1])), text)
    text = _MD_LINK.sub(lambda m: held(f'<a href="{esc(m[2])}">{_md_styles(esc(m[1]))}</a>'), text)
    return held.restore(_md_styles(esc(text)))


def _md_styles(text: str) -> str:
    for pattern, tag in _MD_STYLES:
        text = pattern.sub(lambda m, tag=tag: f"<{tag}>{m[1] or m[2]}</{tag}>", text)
    return text


def md_blocks(text: str) -> str:
    """Paragraphs (a blank line between them; a single line break is a space, as in CommonMark)
    and "- " / "1. " lists."""
    return "".join(_md_paragraph(p.split("\n")) for p in re.split(r"\n[ \t]*\n", text.strip()))


def _md_paragraph(lines: list[str]) -> str:
    groups: list[tuple[str, list[str]]] = []  # ("p" | "ul" | "ol", lines or items)
    for line in lines:
        bullet, number = _MD_BULLET.match(line), _MD_NUMBER.match(line)
        item = bullet or number
        if item:
            kind = "ul" if bullet else "ol"
            if groups and groups[-1][0] == kind:
                groups[-1][1].append(item[1])
            else:
                groups.append((kind, [item[1]]))
        elif groups and groups[-1][0] != "p" and line.startswith((" ", "\t")):
            groups[-1][1][-1] += " " + line.strip()
        elif groups and groups[-1][0] == "p":
            groups[-1][1].append(line)
        else:
            groups.append(("p", [line]))
    out = []
    for kind, parts in groups:
        if kind == "p":
            out.append("<p>" + md_inline(" ".join(s.strip() for s in parts)) + "</p>")
        else:
            out.append(f"<{kind}>" + "".join(f"<li>{md_inline(i)}</li>" for i in parts) + f"</{kind}>")
    return "".join(out)


def _low(value: Any, default: str) -> str:
    return str(value).lower() if isinstance(value, str) else default


class AdaptiveCardHtml:
    """Adaptive Card elements as HTML with Teams' light-theme host settings (approximate)."""

    def card(self, card: dict[str, Any]) -> str:
        body = self.items(card.get("body", []), "default")
        if card.get("actions"):
            body += self.spaced(self.actions(card["actions"]), "medium", False, bool(card.get("body")))
        width = _low((card.get("msteams") or {}).get("width"), "")
        style = _low(card.get("style"), "default")
        background = CONTAINER_BACKGROUNDS.get(style, "#FFFFFF")
        return f'<div class="card{"" if width == "full" else " narrow"}" style="background:{background}">{body}</div>'

    def spaced(self, inner: str, spacing: str, separator: bool, not_first: bool) -> str:
        if not not_first:
            return f"<div>{inner}</div>"
        gap = SPACING.get(spacing, SPACING["default"])
        if separator:
            half = gap / 2
            return f'<div style="margin-top:{half}px;padding-top:{half}px;border-top:1px solid #E0E0E0">{inner}</div>'
        return f'<div style="margin-top:{gap}px">{inner}</div>'

    def items(self, elements: list[dict[str, Any]], style: str) -> str:
        out = []
        for element in elements:
            if element.get("isVisible") is False:
                continue
            inner = self.element(element, style)
            out.append(self.spaced(inner, _low(element.get("spacing"), "default"), bool(element.get("separator")), bool(out)))
        return "".join(out)

    def element(self, element: dict[str, Any], style: str) -> str:
        kind = element.get("type")
        if kind == "TextBlock":
            return self.text_block(element, style)
        if kind == "RichTextBlock":
            return self.rich_text(element)
        if kind == "FactSet":
            rows = "".join(
                f'<tr><td class="title ac-text"><div>{md_inline(str(f.get("title", "")))}</div></td>'
                f'<td class="ac-text">{md_inline(str(f.get("value", "")))}</td></tr>'
                for f in element.get("facts", [])
            )
            return f'<table class="ac-facts">{rows}</table>'
        if kind in ("Container", "Column"):
            return self.container(element, style)
        if kind == "ColumnSet":
            return self.column_set(element, style)
        if kind == "ActionSet":
            return self.actions(element.get("actions", []))
        if kind == "Image":
            size = {"small": 40, "medium": 80, "large": 160}.get(_low(element.get("size"), "medium"), 80)
            return f'<span class="ac-image" style="width:{size}px;height:{size}px">{esc(element.get("altText", "image"))}</span>'
        return f'<div class="unsupported">[{esc(str(kind))} not drawn by this preview]</div>'

    def text_block(self, element: dict[str, Any], style: str) -> str:
        text_style = _low(element.get("style"), "default")
        heading = text_style == "heading"
        size = FONT_SIZES.get(_low(element.get("size"), "large" if heading else "default"), 14)
        weight = FONT_WEIGHTS.get(_low(element.get("weight"), "bolder" if heading else "default"), 400)
        colour = COLOURS.get(_low(element.get("color"), "default"), COLOURS["default"])[1 if element.get("isSubtle") else 0]
        css = [f"font-size:{size}px", f"font-weight:{weight}", f"color:{colour}", f"line-height:{round(size * 1.33)}px"]
        if _low(element.get("fontType"), "default") == "monospace":
            css.append('font-family:Consolas,"Courier New",monospace')
        if (align := _low(element.get("horizontalAlignment"), "left")) != "left":
            css.append(f"text-align:{align}")
        if not element.get("wrap"):
            css += ["white-space:nowrap", "overflow:hidden", "text-overflow:ellipsis"]
            content = md_inline(" ".join(str(element.get("text", "")).split()))
        else:
            content = md_blocks(str(element.get("text", "")))
            if lines := element.get("maxLines"):
                css += ["display:-webkit-box", "-webkit-box-orient:vertical", f"-webkit-line-clamp:{int(lines)}", "overflow:hidden"]
        role = ' role="heading"' if heading else ""
        return f'<div class="ac-text"{role} style="{";".join(css)}">{content}</div>'

    def rich_text(self, element: dict[str, Any]) -> str:
        runs = []
        for inline in element.get("inlines", []):
            if isinstance(inline, str):
                inline = {"text": inline}
            css = [f"font-size:{FONT_SIZES.get(_low(inline.get('size'), 'default'), 14)}px",
                   f"font-weight:{FONT_WEIGHTS.get(_low(inline.get('weight'), 'default'), 400)}",
                   f"color:{COLOURS.get(_low(inline.get('color'), 'default'), COLOURS['default'])[1 if inline.get('isSubtle') else 0]}"]
            if inline.get("italic"):
                css.append("font-style:italic")
            if inline.get("strikethrough"):
                css.append("text-decoration:line-through")
            if inline.get("highlight"):
                css.append("background:#FFF100")
            runs.append(f'<span style="{";".join(css)}">{esc(str(inline.get("text", "")))}</span>')
        return f'<div class="ac-text">{"".join(runs)}</div>'

    def container(self, element: dict[str, Any], parent_style: str) -> str:
        style = _low(element.get("style"), parent_style)
        inner = self.items(element.get("items", []), style)
        if style != parent_style and style in CONTAINER_BACKGROUNDS:
            return f'<div style="background:{CONTAINER_BACKGROUNDS[style]};padding:{SPACING["padding"]}px">{inner}</div>'
        return f"<div>{inner}</div>"

    def column_set(self, element: dict[str, Any], style: str) -> str:
        columns = []
        for i, column in enumerate(element.get("columns", [])):
            width = column.get("width", "stretch")
            if isinstance(width, int | float):
                flex = f"flex:{width} 1 0"
            elif str(width).lower() == "auto":
                flex = "flex:0 0 auto"
            elif str(width).endswith("px"):
                flex = f"flex:0 0 {esc(str(width))}"
            else:
                flex = "flex:1 1 0"
            gap = 0 if i == 0 else SPACING.get(_low(column.get("spacing"), "default"), 8)
            columns.append(f'<div style="{flex};min-width:0;margin-left:{gap}px">{self.container(column, style)}</div>')
        return f'<div style="display:flex">{"".join(columns)}</div>'

    def actions(self, actions: list[dict[str, Any]]) -> str:
        buttons = []
        for action in actions:
            title = esc(str(action.get("title", "")))
            if action.get("type") == "Action.ShowCard":
                title += " &#9662;"
            buttons.append(f'<span class="ac-button">{title}</span>')
        return f'<div class="ac-actions">{"".join(buttons)}</div>'


def teams_page(payload: dict[str, Any]) -> str:
    cards = []
    for attachment in payload.get("attachments", []):
        if attachment.get("contentType") == "application/vnd.microsoft.card.adaptive":
            cards.append(AdaptiveCardHtml().card(attachment["content"]))
        else:
            cards.append(f'<div class="unsupported">[{esc(str(attachment.get("contentType")))} not drawn by this preview]</div>')
    return page(
        '<div class="post"><div class="avatar">W</div><div class="bubble">'
        f'<div class="meta"><b>Workflows</b>{TIME}</div>{"".join(cards)}</div></div>',
        TEAMS_CSS,
        "#F5F5F5",
    )


# --- email: the HTML part as it is, in a plain mail-client frame ----------------------------------

MAIL_CSS = f"""
#page {{ font: 14px/1.4 "Segoe UI", -apple-system, "Helvetica Neue", "Liberation Sans", Arial, sans-serif, {EMOJI_FONTS}; color: #242424; }}
.head {{ padding: 16px 20px 12px 20px; border-bottom: 1px solid #E0E0E0; }}
.subject {{ font-size: 19px; font-weight: 600; margin-bottom: 10px; overflow-wrap: anywhere; }}
.from {{ display: flex; gap: 10px; align-items: center; }}
.avatar {{ flex: 0 0 36px; height: 36px; border-radius: 50%; background: #0F6CBD; color: #fff; font-weight: 600;
           display: flex; align-items: center; justify-content: center; }}
.who {{ flex: 1 1 auto; }}
.who .to {{ color: #616161; font-size: 12px; }}
.date {{ color: #616161; font-size: 12px; white-space: nowrap; }}
iframe {{ display: block; width: 100%; height: 200px; border: 0; }}
"""


def mail_page(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("html",))
    if part is None:
        raise RuntimeError("the mail has no HTML part")
    body = part.get_content()
    sender = str(mail["From"])
    initial = (sender.strip('"')[:1] or "?").upper()
    fit = "this.style.height=this.contentDocument.documentElement.scrollHeight+'px'"
    return page(
        f'<div class="head"><div class="subject">{esc(str(mail["Subject"]))}</div>'
        f'<div class="from"><div class="avatar">{esc(initial)}</div>'
        f'<div class="who"><div>{esc(sender)}</div><div class="to">To: {esc(str(mail["To"]))}</div></div>'
        f'<div class="date">{DATE}</div></div></div>'
        f'<iframe scrolling="no" onload="{fit}" srcdoc="{esc(body)}"></iframe>',
        MAIL_CSS,
        "#FFFFFF",
    )


# --- screenshots ----------------------------------------------------------------------------------


def find_chromium(given: str | None) -> str:
    for name in ([given] if given else ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]):
        path = shutil.which(name)
        if path:
            return path
    raise PicturesUnavailable(
        "Chromium not found: install it (apt-get install chromium fonts-noto-color-emoji fonts-liberation fonts-lato) or pass --chromium PATH"
    )


def screenshot(chromium: str, html_file: Path, png: Path, width: int = WIDTH) -> None:
    """A screenshot of the page, cropped to the drawn page (the backdrop colour cut off below it)."""
    from PIL import Image, ImageChops

    with tempfile.TemporaryDirectory(prefix="render-messages-") as profile:
        raw = Path(profile) / "shot.png"
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}/profile", "--hide-scrollbars",
            "--force-device-scale-factor=1", f"--window-size={width},{MAX_HEIGHT}", f"--screenshot={raw}", html_file.as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
        if result.returncode != 0 or not raw.exists():
            raise RuntimeError(f"chromium failed on {html_file.name} (exit {result.returncode}):\n{result.stderr[-2000:]}")
        with Image.open(raw) as shot:
            image = shot.convert("RGB")
    box = ImageChops.difference(image, Image.new("RGB", image.size, BACKDROP)).getbbox()
    if box is None:
        raise RuntimeError(f"{html_file.name}: nothing was drawn")
    if box[3] >= image.height:
        raise RuntimeError(f"{html_file.name}: the page is taller than {MAX_HEIGHT}px")
    image.crop((0, 0, image.width, box[3])).save(png, optimize=True)


# --- drawing ----------------------------------------------------------------------------------


def check_tools(chromium: str | None) -> str:
    """The Chromium binary to use; raises PicturesUnavailable when a tool is missing."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise PicturesUnavailable("the pictures need Pillow to crop the screenshots: .venv/bin/pip install pillow") from None
    return find_chromium(chromium)


def draw(out: Path, pictures: Sequence[tuple[str, str, Any]], chromium: str, keep_html: bool = False) -> list[Path]:
    """Draw each (name, kind, sent) as ``out/<name>.png``: kind ``slack`` or ``teams`` with the
    JSON payload posted, ``email`` with the mail. Returns the pictures written."""
    painters = {"slack": slack_page, "teams": teams_page, "email": mail_page}
    written = []
    with tempfile.TemporaryDirectory(prefix="render-messages-pages-") as tmp:
        pages = out if keep_html else Path(tmp)
        for name, kind, sent in pictures:
            page_file = pages / f"{name}.page.html"
            page_file.write_text(painters[kind](sent), encoding="utf-8")
            png = out / f"{name}.png"
            screenshot(chromium, page_file, png)
            written.append(png)
    return written
