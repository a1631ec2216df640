// Tether's browser UI: sessions, streaming answers, tools, models; built on tether-client.
import { TetherClient, TetherError } from '/ui/client/index.js'
import { renderMarkdown } from '/ui/markdown.js'

const $ = (id) => document.getElementById(id)
const els = {
  sidebar: $('sidebar'), sessions: $('sessions'), search: $('search'), results: $('search-results'), newChat: $('new-chat'), toggle: $('toggle-sidebar'),
  title: $('title'), model: $('model'), thoughts: $('show-thoughts'), status: $('status'),
  messages: $('messages'), composer: $('composer'), input: $('input'), send: $('send'), stop: $('stop'),
  tokenDialog: $('token-dialog'), tokenForm: $('token-form'), tokenInput: $('token-input'), tokenError: $('token-error'),
}

// `?token=` (kept for this tab, then removed from the address bar) and `?o.KEY=VALUE` chat options.
const params = new URLSearchParams(location.search)
if (params.has('token')) {
  sessionStorage.setItem('tether.token', params.get('token'))
  params.delete('token')
  history.replaceState(null, '', `${location.pathname}${params.size ? `?${params}` : ''}`)
}
const extraOptions = {}
for (const [key, value] of params) {
  if (!key.startsWith('o.')) continue
  try {
    extraOptions[key.slice(2)] = JSON.parse(value)
  } catch {
    extraOptions[key.slice(2)] = value
  }
}

const state = { client: null, connection: null, sessionId: null, sessions: [], turn: null, lastUserMessageId: null }

function connect() {
  const token = sessionStorage.getItem('tether.token') ?? undefined
  state.connection?.close()
  state.client = new TetherClient({ baseUrl: location.origin, ...(token && { token }) })
  state.connection = state.client.connection((event) => {
    if (event.type === 'reconnecting') setStatus('Reconnecting…', true)
    if (event.type === 'reconnected') setStatus('')
  })
}

function setStatus(text, bad = false) {
  els.status.textContent = text
  els.status.classList.toggle('bad', bad)
}

async function askForToken(refused) {
  els.tokenError.hidden = !refused
  els.tokenInput.value = ''
  els.tokenDialog.showModal()
  await new Promise((resolve) => els.tokenForm.addEventListener('submit', resolve, { once: true }))
  sessionStorage.setItem('tether.token', els.tokenInput.value)
  connect()
}

/** Run a REST call; a 401 asks for the token and tries again. */
async function rest(call) {
  for (let refused = false; ; refused = true) {
    try {
      return await call(state.client)
    } catch (error) {
      if (!(error instanceof TetherError) || error.code !== 'unauthorized') throw error
      await askForToken(refused || sessionStorage.getItem('tether.token') !== null)
    }
  }
}

// ---- sessions

async function loadSessions() {
  state.sessions = await rest((c) => c.listSessions({ limit: 200 }))
  renderSessions()
}

function renderSessions() {
  els.sessions.replaceChildren(
    ...state.sessions.map((session) => {
      const li = document.createElement('li')
      li.classList.toggle('active', session.id === state.sessionId)
      li.dataset.sessionId = session.id
      const open = document.createElement('button')
      open.className = 'open'
      open.type = 'button'
      open.textContent = session.title || 'Untitled chat'
      open.title = session.title
      open.addEventListener('click', () => openSession(session.id))
      const rename = document.createElement('button')
      rename.className = 'rename'
      rename.type = 'button'
      rename.textContent = '✎'
      rename.setAttribute('aria-label', `Rename ${session.title || 'chat'}`)
      rename.addEventListener('click', () => startRename(li, session))
      const remove = document.createElement('button')
      remove.className = 'delete'
      remove.type = 'button'
      remove.textContent = '✕'
      remove.setAttribute('aria-label', `Delete ${session.title || 'chat'}`)
      remove.addEventListener('click', () => deleteSession(session.id))
      li.append(open, rename, remove)
      return li
    })
  )
  const current = state.sessions.find((s) => s.id === state.sessionId)
  els.title.textContent = current ? current.title || 'Untitled chat' : 'New chat'
}

async function openSession(id) {
  state.sessionId = id
  els.sidebar.classList.remove('open')
  renderSessions()
  const messages = await rest((c) => c.listMessages(id))
  els.messages.replaceChildren()
  const toolCards = new Map()
  state.lastUserMessageId = null
  for (const message of messages) {
    if (message.role === 'user') {
      addUserMessage(message.content)
      state.lastUserMessageId = message.id
    }
    else if (message.role === 'assistant') {
      const view = addAssistantMessage()
      for (const call of message.tool_calls ?? []) toolCards.set(call.id, view.toolCard(call))
      view.setText(message.content)
      view.finish({ finishReason: message.finish_reason, usage: message.usage, timings: null, model: message.model })
    } else if (message.role === 'tool') {
      toolCards.get(message.tool_call_id)?.setResult({ result: message.content })
    }
  }
  if (messages.length === 0) showEmpty()
  offerRegenerate()
  scrollDown()
}

function newChat() {
  state.sessionId = null
  state.lastUserMessageId = null
  els.sidebar.classList.remove('open')
  renderSessions()
  showEmpty()
  els.input.focus()
}

/** Swap the session's row for a title field: Enter (or leaving it) saves, Escape cancels. */
function startRename(li, session) {
  const field = document.createElement('input')
  field.className = 'rename-field'
  field.value = session.title
  field.maxLength = 200
  field.setAttribute('aria-label', 'New title')
  let done = false
  const finish = async (save) => {
    if (done) return
    done = true
    const title = field.value.trim()
    if (save && title && title !== session.title) {
      try {
        await rest((c) => c.renameSession(session.id, title))
      } catch (error) {
        setStatus(`Rename failed: ${error.message}`, true)
      }
    }
    await loadSessions()
  }
  field.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') void finish(true)
    if (event.key === 'Escape') void finish(false)
  })
  field.addEventListener('blur', () => void finish(true))
  li.replaceChildren(field)
  field.focus()
  field.select()
}

// ---- search

/** The snippet as text nodes and <mark> elements: the server marks hits, the rest is plain text. */
function snippetNodes(snippet) {
  const nodes = []
  for (const [i, part] of snippet.split(/<mark>|<\/mark>/).entries()) {
    if (!part) continue
    if (i % 2 === 1) {
      const mark = document.createElement('mark')
      mark.textContent = part
      nodes.push(mark)
    } else nodes.push(document.createTextNode(part))
  }
  return nodes
}

let searchSerial = 0
async function runSearch() {
  const q = els.search.value.trim()
  const serial = ++searchSerial
  if (!q) {
    els.results.hidden = true
    els.sessions.hidden = false
    return
  }
  let results
  try {
    results = await rest((c) => c.searchMessages(q, { limit: 30 }))
  } catch (error) {
    results = []
    setStatus(`Search failed: ${error.message}`, true)
  }
  if (serial !== searchSerial) return // a newer query is under way
  els.sessions.hidden = true
  els.results.hidden = false
  if (results.length === 0) {
    const none = document.createElement('li')
    none.className = 'none'
    none.textContent = 'No messages match.'
    els.results.replaceChildren(none)
    return
  }
  els.results.replaceChildren(
    ...results.map((hit) => {
      const li = document.createElement('li')
      const open = document.createElement('button')
      open.type = 'button'
      open.className = 'hit'
      const title = document.createElement('span')
      title.className = 'hit-title'
      title.textContent = hit.session_title || 'Untitled chat'
      const snippet = document.createElement('span')
      snippet.className = 'snippet'
      snippet.append(...snippetNodes(hit.snippet))
      open.append(title, snippet)
      open.addEventListener('click', () => void openSession(hit.session_id))
      li.append(open)
      return li
    })
  )
}

let searchTimer = 0
els.search.addEventListener('input', () => {
  clearTimeout(searchTimer)
  searchTimer = setTimeout(() => void runSearch(), 200)
})
els.search.addEventListener('keydown', (event) => {
  if (event.key === 'Escape') {
    els.search.value = ''
    void runSearch()
  }
})

async function deleteSession(id) {
  if (!confirm('Delete this chat?')) return
  await rest((c) => c.deleteSession(id))
  if (state.sessionId === id) newChat()
  await loadSessions()
}

// ---- messages

function showEmpty() {
  const empty = document.createElement('div')
  empty.className = 'empty'
  empty.textContent = 'Ask anything. Answers stream in as the model writes them.'
  els.messages.replaceChildren(empty)
}

function scrollDown() {
  els.messages.scrollTop = els.messages.scrollHeight
}

function messageBox(role) {
  els.messages.querySelector('.empty')?.remove()
  const box = document.createElement('div')
  box.className = `message ${role}`
  const bubble = document.createElement('div')
  bubble.className = 'bubble'
  box.append(bubble)
  els.messages.append(box)
  return { box, bubble }
}

function addUserMessage(text) {
  const { bubble } = messageBox('user')
  bubble.textContent = text
}

function addAssistantMessage() {
  const { box, bubble } = messageBox('assistant')
  const body = document.createElement('div')
  body.className = 'body'
  bubble.append(body)
  let text = ''
  let thoughts = null
  let frame = 0
  const paint = () => {
    frame = 0
    renderMarkdown(body, text)
    scrollDown()
  }
  return {
    box,
    append(token) {
      text += token
      frame ||= requestAnimationFrame(paint)
    },
    setText(value) {
      text = value
      paint()
    },
    streaming(on) {
      bubble.classList.toggle('streaming', on)
    },
    thinking(token) {
      if (thoughts === null) {
        const details = document.createElement('details')
        details.className = 'thoughts'
        const summary = document.createElement('summary')
        summary.textContent = 'Thoughts'
        thoughts = document.createElement('div')
        details.append(summary, thoughts)
        bubble.insertBefore(details, body)
      }
      thoughts.textContent += token
    },
    toolCard(call) {
      const details = document.createElement('details')
      details.className = 'tool-card'
      details.dataset.tool = call.name
      const summary = document.createElement('summary')
      summary.textContent = `Tool ${call.name}: running…`
      const args = document.createElement('pre')
      args.className = 'arguments'
      args.textContent = JSON.stringify(call.arguments, null, 2)
      const result = document.createElement('pre')
      result.className = 'result'
      details.append(summary, args, result)
      bubble.insertBefore(details, body)
      return {
        setResult(data) {
          const failed = data.error !== undefined && data.error !== null
          const took = typeof data.duration_ms === 'number' ? ` (${data.duration_ms.toFixed(1)} ms)` : ''
          summary.textContent = `Tool ${call.name}: ${failed ? 'failed' : 'done'}${took}`
          result.classList.toggle('failed', failed)
          result.textContent = failed ? String(data.error) : typeof data.result === 'string' ? data.result : JSON.stringify(data.result, null, 2)
        },
      }
    },
    finish({ finishReason, usage, timings, model, note }) {
      paint()
      bubble.classList.remove('streaming')
      const meta = document.createElement('div')
      meta.className = 'meta'
      const notes = { cancelled: 'Stopped', interrupted: 'Interrupted', length: 'Cut at the length limit', tool_loop_limit: 'Tool loop limit' }
      const shown = note ?? notes[finishReason]
      if (shown) {
        const span = document.createElement('span')
        span.className = 'note'
        span.textContent = shown
        meta.append(span)
      }
      const facts = []
      if (model) facts.push(model)
      if (usage?.completion_tokens != null) facts.push(`${usage.completion_tokens} tokens`)
      if (timings?.ttft_ms != null) facts.push(`first token ${Math.round(timings.ttft_ms)} ms`)
      if (timings?.tokens_per_s != null) facts.push(`${Math.round(timings.tokens_per_s)} tok/s`)
      meta.append(facts.join(' · '))
      box.append(meta)
    },
  }
}

// ---- sending

function options() {
  const chosen = { ...extraOptions }
  if (els.model.value) chosen.model = els.model.value
  if (els.thoughts.checked) chosen.show_thoughts = true
  return chosen
}

function setRunning(running) {
  els.send.hidden = running
  els.stop.hidden = !running
}

/** A Regenerate button under the last answer (only there, and not while a turn runs). */
function offerRegenerate() {
  els.messages.querySelector('.regenerate')?.remove()
  const last = els.messages.lastElementChild
  if (state.turn || !state.sessionId || !state.lastUserMessageId || !last?.classList.contains('assistant')) return
  const button = document.createElement('button')
  button.type = 'button'
  button.className = 'regenerate'
  button.textContent = '↻ Regenerate'
  button.addEventListener('click', () => void regenerate())
  last.querySelector('.meta')?.append(button)
}

async function send() {
  const text = els.input.value.trim()
  if (!text || state.turn) return
  els.input.value = ''
  resizeInput()
  addUserMessage(text)
  await runTurn((onEvent) =>
    state.connection.chat({ text, options: options(), ...(state.sessionId && { sessionId: state.sessionId }), onEvent })
  )
}

/** Answer the last question again: the new answer replaces the old one on screen (both are kept). */
async function regenerate() {
  if (state.turn || !state.sessionId || !state.lastUserMessageId) return
  els.messages.lastElementChild?.remove()
  const sessionId = state.sessionId
  const messageId = state.lastUserMessageId
  await runTurn((onEvent) => state.connection.regenerate({ sessionId, messageId, options: options(), onEvent }))
}

async function runTurn(start) {
  els.messages.querySelector('.regenerate')?.remove()
  const view = addAssistantMessage()
  view.streaming(true)
  scrollDown()
  const cards = new Map()
  let model = null
  const turn = start((event) => {
    if (event.type === 'start') {
      model = event.model
      state.lastUserMessageId = event.userMessageId ?? state.lastUserMessageId
      if (!state.sessionId) {
        state.sessionId = event.sessionId
        void loadSessions()
      }
    } else if (event.type === 'token') view.append(event.token)
    else if (event.type === 'thinking') view.thinking(event.token)
    else if (event.type === 'tool' && event.phase === 'call') cards.set(event.payload.id, view.toolCard(event.payload))
    else if (event.type === 'tool' && event.phase === 'result') cards.get(event.payload.id)?.setResult(event.payload)
  })
  state.turn = turn
  setRunning(true)
  try {
    const result = await turn
    view.finish({ ...result, model })
  } catch (error) {
    if (error instanceof TetherError && error.code === 'unauthorized') {
      view.finish({ note: 'Not sent: the server wants a token' })
      await askForToken(true)
    } else {
      view.finish({ note: error instanceof TetherError ? `Error (${error.code}): ${error.message}` : String(error) })
    }
  } finally {
    state.turn = null
    setRunning(false)
    offerRegenerate()
    void loadSessions()
  }
}

function resizeInput() {
  els.input.style.height = 'auto'
  els.input.style.height = `${Math.min(els.input.scrollHeight, 200)}px`
}

// ---- wiring

els.composer.addEventListener('submit', (event) => {
  event.preventDefault()
  void send()
})
els.input.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault()
    void send()
  }
})
els.input.addEventListener('input', resizeInput)
els.stop.addEventListener('click', () => state.turn?.cancel())
els.newChat.addEventListener('click', newChat)
els.toggle.addEventListener('click', () => els.sidebar.classList.toggle('open'))

async function loadModels() {
  const models = await rest((c) => c.listModels())
  const auto = new Option('Default', '')
  els.model.replaceChildren(auto, ...models.map((m) => new Option(`${m.id} (${m.engine})`, m.id)))
}

async function start() {
  connect()
  showEmpty()
  try {
    await loadSessions()
    await loadModels()
    setStatus('')
  } catch (error) {
    setStatus(`Cannot reach the server: ${error.message}`, true)
  }
  document.body.dataset.ready = 'true'
  els.input.focus()
}

void start()
