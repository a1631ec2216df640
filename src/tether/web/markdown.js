// A small markdown renderer that builds DOM nodes (never innerHTML): text from the model or the
// user reaches the page only through textContent, so no HTML in it is ever parsed.
// Covers what chat answers use: ``` fences, headings, lists, paragraphs, `code`, **bold**,
// *italic*, and [links](https://...) (http, https and mailto only).

const INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|(\*[^*\n]+\*)|(\[[^\]\n]+\]\([^)\s]+\))/g
const SAFE_LINK = /^(https?:|mailto:)/i

function inline(parent, text) {
  let last = 0
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) parent.append(text.slice(last, match.index))
    const token = match[0]
    if (match[1]) {
      const code = document.createElement('code')
      code.textContent = token.slice(1, -1)
      parent.append(code)
    } else if (match[2]) {
      const strong = document.createElement('strong')
      inline(strong, token.slice(2, -2))
      parent.append(strong)
    } else if (match[3]) {
      const em = document.createElement('em')
      inline(em, token.slice(1, -1))
      parent.append(em)
    } else {
      const [, label, href] = /^\[([^\]]+)\]\(([^)]+)\)$/.exec(token)
      if (SAFE_LINK.test(href)) {
        const a = document.createElement('a')
        a.href = href
        a.rel = 'noopener noreferrer'
        a.target = '_blank'
        a.textContent = label
        parent.append(a)
      } else {
        parent.append(token)
      }
    }
    last = match.index + token.length
  }
  if (last < text.length) parent.append(text.slice(last))
}

function blocks(parent, text) {
  let list = null
  let paragraph = null
  const flush = () => {
    list = null
    paragraph = null
  }
  for (const line of text.split('\n')) {
    const heading = /^(#{1,6})\s+(.*)$/.exec(line)
    const item = /^\s*(?:[-*+]|(\d+)[.)])\s+(.*)$/.exec(line)
    if (line.trim() === '') {
      flush()
    } else if (heading) {
      flush()
      const h = document.createElement(`h${Math.min(heading[1].length + 2, 6)}`)
      inline(h, heading[2])
      parent.append(h)
    } else if (item) {
      paragraph = null
      const kind = item[1] ? 'OL' : 'UL'
      if (list === null || list.tagName !== kind) {
        list = document.createElement(kind.toLowerCase())
        parent.append(list)
      }
      const li = document.createElement('li')
      inline(li, item[2])
      list.append(li)
    } else if (paragraph !== null) {
      paragraph.append(document.createElement('br'))
      inline(paragraph, line)
    } else {
      list = null
      paragraph = document.createElement('p')
      inline(paragraph, line)
      parent.append(paragraph)
    }
  }
}

/** Render `text` as markdown into `parent` (its old content is replaced). */
export function renderMarkdown(parent, text) {
  parent.replaceChildren()
  const parts = text.split(/^```[^\n]*\n?/m)
  parts.forEach((part, index) => {
    if (index % 2 === 1) {
      const pre = document.createElement('pre')
      const code = document.createElement('code')
      code.textContent = part.replace(/\n$/, '')
      pre.append(code)
      parent.append(pre)
    } else {
      blocks(parent, part)
    }
  })
}
