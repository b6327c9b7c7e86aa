// A small Markdown renderer for model output: fenced code, headings, lists, quotes,
// tables, rules, emphasis, inline code and links. Safe by construction: every piece of
// the input is HTML-escaped before formatting, the only markup added is this file's own
// fixed tags, and a link must point to http(s) or mailto. Unfinished constructs (a code
// fence still streaming) render as if closed.
"use strict";

const Markdown = (() => {
  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const escape = (s) => String(s).replace(/[&<>"']/g, (c) => ESC[c]);

  const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+#.-]*)/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
  const QUOTE = /^\s{0,3}>\s?/;
  const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

  // Inline spans. Code spans and links are set aside as placeholders (\u0000n\u0000)
  // so that emphasis never reaches into them (a URL with underscores stays whole).
  function inline(text) {
    const kept = [];
    const keep = (html) => `\u0000${kept.push(html) - 1}\u0000`;
    let s = String(text).replace(/\u0000/g, "");
    s = s.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, _ticks, code) => keep(`<code>${escape(code)}</code>`));
    s = s.replace(/\[([^\]\n]+)\]\(([^()\s]+)\)/g, (whole, label, url) =>
      /^(https?:|mailto:)/i.test(url)
        ? keep(`<a href="${escape(url)}" target="_blank" rel="noopener noreferrer">${emphasis(escape(label))}</a>`)
        : whole,
    );
    s = s.replace(/\bhttps?:\/\/[^\s<>()]+[^\s<>().,;:!?'"]/g, (url) =>
      keep(`<a href="${escape(url)}" target="_blank" rel="noopener noreferrer">${escape(url)}</a>`),
    );
    s = emphasis(escape(s));
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => kept[Number(i)]);
  }

  function emphasis(s) {
    return s
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/(^|[^*\w])\*([^\s*](?:[^*]*?[^\s*])?)\*(?!\*)/g, "$1<em>$2</em>")
      .replace(/(^|[^\w])_(?=\S)([^_]*?\S)_(?!\w)/g, "$1<em>$2</em>")
      .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
  }

  function codeBlock(code, lang) {
    const label = lang ? `<span>${escape(lang)}</span>` : "<span></span>";
    return (
      `<div class="code"><div class="code-head">${label}<button type="button" class="copy-code">Copy</button></div>` +
      `<pre><code>${escape(code)}</code></pre></div>`
    );
  }

  const cells = (line) => line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  const startsBlock = (line) => FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);

  function list(lines, i, out) {
    const ordered = /\d/.test(lines[i].match(ITEM)[2]);
    const indent = lines[i].match(ITEM)[1].length;
    const start = ordered ? parseInt(lines[i].match(ITEM)[2], 10) : 1;
    const items = [];
    while (i < lines.length) {
      const m = lines[i].match(ITEM);
      if (m && m[1].length <= indent && /\d/.test(m[2]) === ordered) {
        items.push([m[3]]);
      } else if (lines[i].trim() && (/^\s/.test(lines[i]) || !startsBlock(lines[i])) && items.length) {
        items[items.length - 1].push(lines[i].slice(Math.min(indent + 2, lines[i].search(/\S/))));
      } else if (!lines[i].trim() && i + 1 < lines.length && /^\s+\S/.test(lines[i + 1]) && items.length) {
        items[items.length - 1].push("");
      } else {
        break;
      }
      i++;
    }
    const body = items.map(([first, ...rest]) => `<li>${inline(first)}${rest.length ? render(rest.join("\n")) : ""}</li>`);
    const tag = ordered ? "ol" : "ul";
    out.push(`<${tag}${ordered && start !== 1 ? ` start="${start}"` : ""}>${body.join("")}</${tag}>`);
    return i;
  }

  function render(src) {
    const lines = String(src).replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if ((m = line.match(FENCE))) {
        const body = [];
        for (i++; i < lines.length && !lines[i].trim().startsWith(m[1]); i++) body.push(lines[i]);
        i++; // the closing fence, or past the end while the block is still streaming
        out.push(codeBlock(body.join("\n"), m[2]));
      } else if (!line.trim()) {
        i++;
      } else if ((m = line.match(HEADING))) {
        const n = m[1].length;
        out.push(`<h${n}>${inline(m[2])}</h${n}>`);
        i++;
      } else if (RULE.test(line)) {
        out.push("<hr>");
        i++;
      } else if (QUOTE.test(line)) {
        const inner = [];
        for (; i < lines.length && QUOTE.test(lines[i]); i++) inner.push(lines[i].replace(QUOTE, ""));
        out.push(`<blockquote>${render(inner.join("\n"))}</blockquote>`);
      } else if (ITEM.test(line)) {
        i = list(lines, i, out);
      } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
        const head = cells(line).map((c) => `<th>${inline(c)}</th>`).join("");
        const rows = [];
        for (i += 2; i < lines.length && lines[i].includes("|") && lines[i].trim(); i++) {
          rows.push(`<tr>${cells(lines[i]).map((c) => `<td>${inline(c)}</td>`).join("")}</tr>`);
        }
        out.push(`<table><thead><tr>${head}</tr></thead><tbody>${rows.join("")}</tbody></table>`);
      } else {
        const para = [];
        for (; i < lines.length && lines[i].trim() && !(para.length && startsBlock(lines[i])); i++) para.push(lines[i].trim());
        out.push(`<p>${para.map(inline).join("<br>")}</p>`);
      }
    }
    return out.join("\n");
  }

  return { render, escape, inline };
})();

if (typeof module !== "undefined") module.exports = Markdown;
