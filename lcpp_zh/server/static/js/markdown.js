// Markdown to safe HTML with the vendored libraries: markdown-it (tables, quotes, lists; raw HTML off),
// markdown-it-texmath + KaTeX for $…$, $$…$$, \(…\), \[…\], highlight.js for code, DOMPurify over the result.
// LiveMarkdown re-renders only the top-level blocks that changed, so a long streamed answer stays smooth.

import { t } from "./i18n.js";

const { markdownit, texmath, katex, hljs, DOMPurify } = window;

const md = markdownit({ html: false, linkify: true, breaks: true });
md.use(texmath, { engine: katex, delimiters: ["dollars", "brackets"], katexOptions: { throwOnError: false } });
const escapeHtml = md.utils.escapeHtml;

function renderMath(tex, display) {
  try {
    return katex.renderToString(tex, { displayMode: display, throwOnError: false, output: "htmlAndMathml" });
  } catch {  // KaTeX reports most errors inline; anything else shows the source
    return `<code class="math-error">${escapeHtml(tex)}</code>`;
  }
}

// texmath's own renderers wrap formulas in custom <eq>/<eqn> elements; plain spans and divs are styled here.
md.renderer.rules.math_inline = (tokens, idx) => `<span class="math-inline">${renderMath(tokens[idx].content, false)}</span>`;
md.renderer.rules.math_inline_double = (tokens, idx) => `<div class="math-block">${renderMath(tokens[idx].content, true)}</div>`;
md.renderer.rules.math_block = (tokens, idx) => `<div class="math-block">${renderMath(tokens[idx].content, true)}</div>\n`;
md.renderer.rules.math_block_eqno = (tokens, idx) => `<div class="math-block">${renderMath(tokens[idx].content, true)}`
  + `<span class="eqno">(${escapeHtml(tokens[idx].info)})</span></div>\n`;

function highlight(code, lang) {
  if (lang && hljs.getLanguage(lang)) {
    try {
      return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
    } catch { /* fall through to plain text */ }
  }
  return escapeHtml(code);
}

md.renderer.rules.fence = (tokens, idx) => {
  const token = tokens[idx];
  const lang = (token.info || "").trim().split(/\s+/)[0].toLowerCase();
  if (lang === "math") return `<div class="math-block">${renderMath(token.content, true)}</div>\n`;
  const label = escapeHtml(lang || "text");
  const cls = lang ? ` language-${escapeHtml(lang)}` : "";
  return `<div class="code-block"><div class="code-head"><span class="code-lang">${label}</span>`
    + `<button type="button" class="copy-code">${escapeHtml(t("copy"))}</button></div>`
    + `<pre><code class="hljs${cls}">${highlight(token.content, lang)}</code></pre></div>\n`;
};

// Tables scroll sideways inside their own box instead of widening the page on a phone.
md.renderer.rules.table_open = () => '<div class="table-wrap"><table>\n';
md.renderer.rules.table_close = () => "</table></div>\n";

// Links open in a new tab without giving it a handle on this one.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.getAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

function sanitize(html) {
  return DOMPurify.sanitize(html, { ADD_ATTR: ["target"], FORBID_TAGS: ["style", "form", "input"] });
}

// Top-level blocks of `source`: [{key, tokens}], where key is the block's source lines.
function topBlocks(source, env) {
  const tokens = md.parse(source, env);
  const lines = source.split("\n");
  const starts = [];
  tokens.forEach((token, i) => { if (token.level === 0 && token.nesting !== -1) starts.push(i); });
  return starts.map((start, n) => {
    const end = n + 1 < starts.length ? starts[n + 1] : tokens.length;
    const map = tokens[start].map;
    const key = map ? `${tokens[start].type}\n${lines.slice(map[0], map[1]).join("\n")}` : null;
    return { key, tokens: tokens.slice(start, end) };
  });
}

export class LiveMarkdown {
  constructor(root) {
    this.root = root;
    this.blocks = [];  // [{key, el}] in order, mirroring root's children
    this.source = null;
    root.textContent = "";
  }

  update(source) {
    if (source === this.source) return;
    this.source = source;
    const env = {};
    const blocks = topBlocks(source, env);
    let same = 0;
    while (same < blocks.length && same < this.blocks.length && blocks[same].key !== null
           && blocks[same].key === this.blocks[same].key) same += 1;
    for (const old of this.blocks.splice(same)) old.el.remove();
    for (const block of blocks.slice(same)) {
      const el = document.createElement("div");
      el.className = "mdb";
      el.innerHTML = sanitize(md.renderer.render(block.tokens, md.options, env));
      this.root.appendChild(el);
      this.blocks.push({ key: block.key, el });
    }
  }
}
