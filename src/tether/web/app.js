// Tether's browser UI: sessions, streaming answers, tools, models; built on tether-client.
import { TetherClient, TetherError, siblingPosition } from '/ui/client/index.js'
import { renderMarkdown } from '/ui/markdown.js'

const $ = (id) => document.getElementById(id)
const els = {
  sidebar: $('sidebar'), sessions: $('sessions'), search: $('search'), results: $('search-results'), newChat: $('new-chat'), toggle: $('toggle-sidebar'), scrim: $('scrim'),
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

// `timings`, `thoughts` (of answers, by message id) and `toolTimes` (by call id): what the server
// does not store, kept for the answers streamed on this page.
const state = {
  client: null, connection: null, sessionId: null, sessions: [], turn: null,
  timings: new Map(), thoughts: new Map(), toolTimes: new Map(),
}

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

/** Open session `id` (the sidebar folds away on a phone); with `focusId`, at that message. */
async function openSession(id, focusId = null) {
  state.sessionId = id
  els.sidebar.classList.remove('open')
  renderSessions()
  try {
    await showBranch(id, focusId)
  } catch (error) {
    setStatus(`Cannot load the chat: ${error.message}`, true)
  }
}

/** Show session `id`'s active branch; with `focusId`, scrolled to that message and highlighted
 * (its branch made the active one first when it is on another). */
async function showBranch(id, focusId = null) {
  let branch = await rest((c) => c.listMessages(id))
  if (focusId && !branch.some((m) => m.id === focusId)) {
    await rest((c) => c.setActiveBranch(id, focusId))
    branch = await rest((c) => c.listMessages(id))
  }
  if (state.sessionId !== id) return // another session was opened meanwhile
  renderBranch(branch)
  const box = focusId && els.messages.querySelector(`[data-ids~="${CSS.escape(focusId)}"]`)
  if (box) {
    box.scrollIntoView({ block: 'center' })
    box.classList.remove('found')
    void box.offsetWidth // restart the highlight
    box.classList.add('found')
  } else scrollDown()
}

/** Reload the current session's branch from the server (after a turn). */
async function reloadBranch() {
  if (state.sessionId) await showBranch(state.sessionId)
}

/** The branch as the page shows it: each user message, then its answer as one box (the answer's
 * rounds, tool calls and their results together, as it streamed). */
function renderBranch(messages) {
  els.messages.replaceChildren()
  if (messages.length === 0) {
    showEmpty()
    return
  }
  const turns = []
  for (const message of messages) {
    if (message.role === 'user') turns.push({ user: message, answer: [] })
    else if (message.role !== 'system') {
      if (turns.length === 0) turns.push({ user: null, answer: [] })
      turns.at(-1).answer.push(message)
    }
  }
  for (const turn of turns) {
    if (turn.user) addUserMessage(turn.user.content, turn.user)
    if (turn.answer.length > 0) renderAnswer(turn.answer)
  }
}

/** One answer: its rounds' text, tool cards with their results, usage, its switcher. */
function renderAnswer(messages) {
  const view = addAssistantMessage()
  view.box.dataset.ids = messages.map((m) => m.id).join(' ')
  const cards = new Map()
  const replies = messages.filter((m) => m.role === 'assistant')
  for (const message of messages) {
    if (message.role === 'assistant') {
      for (const call of message.tool_calls ?? []) cards.set(call.id, view.toolCard(call))
    } else if (message.role === 'tool') {
      const outcome = message.status === 'error' ? { error: message.content } : { result: message.content }
      cards.get(message.tool_call_id)?.setResult({ ...outcome, duration_ms: state.toolTimes.get(message.tool_call_id) })
    }
  }
  view.setText(replies.map((m) => m.content).filter((text) => text).join('\n\n'))
  const final = replies.at(-1)
  const thoughts = final && state.thoughts.get(final.id)
  if (thoughts) view.thinking(thoughts)
  const counted = replies.filter((m) => typeof m.usage?.completion_tokens === 'number')
  const tokens = counted.length ? counted.reduce((sum, m) => sum + m.usage.completion_tokens, 0) : null
  view.finish({
    finishReason: final?.finish_reason,
    usage: { completion_tokens: tokens },
    timings: final ? state.timings.get(final.id) : null,
    model: final?.model,
  })
  const meta = view.box.querySelector('.meta')
  meta.prepend(...siblingSwitcher(messages[0], 'answer'))
  if (messages[0].role !== 'assistant') return
  const again = document.createElement('button')
  again.type = 'button'
  again.className = 'regenerate'
  again.textContent = '↻ Regenerate'
  again.addEventListener('click', () => void regenerate(view.box, messages[0].id))
  meta.append(again)
}

/** "‹ 2/3 ›" for a message with siblings (edits of a question, regenerations of an answer);
 * nothing for one without. */
function siblingSwitcher(message, what) {
  const position = siblingPosition(message)
  if (position.count < 2) return []
  const box = document.createElement('span')
  box.className = 'switcher'
  const step = (label, target, name) => {
    const button = document.createElement('button')
    button.type = 'button'
    button.className = `step ${name}`
    button.textContent = label
    button.disabled = !target
    button.setAttribute('aria-label', `${name === 'previous' ? 'Previous' : 'Next'} ${what}`)
    button.addEventListener('click', () => void switchBranch(target))
    return button
  }
  const count = document.createElement('span')
  count.className = 'count'
  count.textContent = `${position.index}/${position.count}`
  box.append(step('‹', position.previous, 'previous'), count, step('›', position.next, 'next'))
  return [box]
}

/** Show the branch through `messageId` and make it the session's active one (kept on reload). */
async function switchBranch(messageId) {
  if (state.turn || !state.sessionId || !messageId) return
  const sessionId = state.sessionId
  try {
    await rest((c) => c.setActiveBranch(sessionId, messageId))
    await showBranch(sessionId)
  } catch (error) {
    setStatus(`Switching failed: ${error.message}`, true)
    return
  }
  els.messages.querySelector(`[data-ids~="${CSS.escape(messageId)}"]`)?.scrollIntoView({ block: 'nearest' })
}

function newChat() {
  state.sessionId = null
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

const ROLE_NAMES = { user: 'You', assistant: 'Assistant', tool: 'Tool', system: 'System' }

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
      const head = document.createElement('span')
      head.className = 'hit-head'
      const title = document.createElement('span')
      title.className = 'hit-title'
      title.textContent = hit.session_title || 'Untitled chat'
      const role = document.createElement('span')
      role.className = `hit-role ${hit.role}`
      role.textContent = ROLE_NAMES[hit.role] ?? hit.role
      head.append(title, role)
      const snippet = document.createElement('span')
      snippet.className = 'snippet'
      snippet.append(...snippetNodes(hit.snippet))
      open.append(head, snippet)
      open.setAttribute('aria-label', `${role.textContent} in ${title.textContent}: ${snippet.textContent}`)
      open.addEventListener('click', () => void openSession(hit.session_id, hit.message_id))
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

/** A user message; a stored one (`message`) gets its actions: the edit button and, with edits
 * beside it, the switcher between them. */
function addUserMessage(text, message = null) {
  const { box, bubble } = messageBox('user')
  bubble.textContent = text
  if (message === null) return box
  box.dataset.ids = message.id
  const actions = document.createElement('div')
  actions.className = 'actions'
  const edit = document.createElement('button')
  edit.type = 'button'
  edit.className = 'edit'
  edit.textContent = '✎ Edit'
  edit.setAttribute('aria-label', 'Edit message')
  edit.addEventListener('click', () => startEdit(box, message))
  actions.append(edit, ...siblingSwitcher(message, 'version'))
  box.append(actions)
  return box
}

/** Swap a user message for an editor: Enter (or Send) stores the new text beside the old as a
 * new branch and answers it; Shift+Enter is a new line; Escape (or Cancel) keeps the message. */
function startEdit(box, message) {
  if (state.turn) return
  els.messages.querySelector('.message.editing .cancel')?.click() // one editor at a time
  const bubble = box.querySelector('.bubble')
  const actions = box.querySelector('.actions')
  const editor = document.createElement('form')
  editor.className = 'editor'
  const field = document.createElement('textarea')
  field.value = message.content
  field.setAttribute('aria-label', 'Edit message')
  const buttons = document.createElement('div')
  buttons.className = 'editor-buttons'
  const cancel = document.createElement('button')
  cancel.type = 'button'
  cancel.className = 'cancel'
  cancel.textContent = 'Cancel'
  const save = document.createElement('button')
  save.type = 'submit'
  save.className = 'primary save'
  save.textContent = 'Send'
  buttons.append(cancel, save)
  editor.append(field, buttons)
  const close = () => {
    box.classList.remove('editing')
    editor.replaceWith(bubble)
    actions.hidden = false
  }
  cancel.addEventListener('click', close)
  editor.addEventListener('submit', (event) => {
    event.preventDefault()
    const text = field.value.trim()
    if (!text || text === message.content.trim()) {
      close()
      return
    }
    close()
    void sendEdit(box, message, text)
  })
  field.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') close()
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault()
      editor.requestSubmit()
    }
  })
  const fit = () => {
    field.style.height = 'auto'
    field.style.height = `${Math.min(field.scrollHeight, 320)}px`
  }
  field.addEventListener('input', fit)
  box.classList.add('editing')
  actions.hidden = true
  bubble.replaceWith(editor)
  fit()
  field.focus()
  field.setSelectionRange(field.value.length, field.value.length)
}

function addAssistantMessage() {
  const { box, bubble } = messageBox('assistant')
  const body = document.createElement('div')
  body.className = 'body'
  bubble.append(body)
  let text = ''
  let thoughts = null
  let frame = 0
  let roundBreak = false // a tool call ended a round: the next round's text is a new paragraph
  const paint = () => {
    frame = 0
    renderMarkdown(body, text)
    scrollDown()
  }
  return {
    box,
    append(token) {
      if (roundBreak && text) text += '\n\n'
      roundBreak = false
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
      roundBreak = true
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
      if (usage?.completion_tokens != null) facts.push(`${usage.completion_tokens} ${usage.completion_tokens === 1 ? 'token' : 'tokens'}`)
      if (timings?.ttft_ms != null) facts.push(`first token ${Math.round(timings.ttft_ms)} ms`)
      if (timings?.tokens_per_s != null) facts.push(`${Math.round(timings.tokens_per_s)} tok/s`)
      const shownFacts = document.createElement('span')
      shownFacts.className = 'facts'
      shownFacts.textContent = facts.join(' · ')
      meta.append(shownFacts)
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
  document.body.classList.toggle('running', running) // edits and switches wait for the answer
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

/** The edited text as a new branch beside `message` (the old one and its answers stay, one
 * switch away): what came after it leaves the page, the new answer streams in. */
async function sendEdit(box, message, text) {
  if (state.turn || !state.sessionId) return
  while (box.nextElementSibling) box.nextElementSibling.remove()
  box.querySelector('.actions')?.remove()
  box.querySelector('.bubble').textContent = text
  const sessionId = state.sessionId
  await runTurn((onEvent) =>
    state.connection.edit({ sessionId, messageId: message.id, text, options: options(), onEvent })
  )
}

/** Answer a question again: the new answer takes the old one's place (`box`, which goes with
 * what came after it; both answers are kept, switchable with ‹ ›). `answerId`: a message of the
 * answer being replaced. */
async function regenerate(box, answerId) {
  if (state.turn || !state.sessionId) return
  while (box.nextElementSibling) box.nextElementSibling.remove()
  box.remove()
  const sessionId = state.sessionId
  await runTurn((onEvent) => state.connection.regenerate({ sessionId, messageId: answerId, options: options(), onEvent }))
}

/** Stream one turn into a new answer box; when it ends, the page shows the stored branch (with
 * the new message's place among its siblings). An error stays on the page as a note. */
async function runTurn(start) {
  els.messages.querySelectorAll('.regenerate').forEach((button) => button.remove())
  const view = addAssistantMessage()
  view.streaming(true)
  scrollDown()
  const cards = new Map()
  let model = null
  let thoughts = ''
  const turn = start((event) => {
    if (event.type === 'start') {
      model = event.model
      if (!state.sessionId) {
        state.sessionId = event.sessionId
        void loadSessions()
      }
    } else if (event.type === 'token') view.append(event.token)
    else if (event.type === 'thinking') {
      thoughts += event.token
      view.thinking(event.token)
    } else if (event.type === 'tool' && event.phase === 'call') cards.set(event.payload.id, view.toolCard(event.payload))
    else if (event.type === 'tool' && event.phase === 'result') {
      state.toolTimes.set(event.payload.id, event.payload.duration_ms)
      cards.get(event.payload.id)?.setResult(event.payload)
    }
  })
  state.turn = turn
  setRunning(true)
  let result = null
  try {
    result = await turn
  } catch (error) {
    if (error instanceof TetherError && error.code === 'unauthorized') {
      view.finish({ note: 'Not sent: the server wants a token' })
      await askForToken(true)
    } else {
      view.finish({ note: error instanceof TetherError ? `Error (${error.code}): ${error.message}` : String(error) })
    }
  }
  if (result !== null) {
    state.timings.set(result.messageId, result.timings)
    if (thoughts) state.thoughts.set(result.messageId, thoughts)
    try {
      await reloadBranch() // the stored answer takes the streamed one's place, with its switcher
    } catch (error) {
      view.finish({ ...result, model })
      setStatus(`Cannot load the chat: ${error.message}`, true)
    }
  }
  state.turn = null
  setRunning(false)
  void loadSessions()
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
els.scrim.addEventListener('click', () => els.sidebar.classList.remove('open'))
// The keyboard hint does not fit a phone's composer.
const narrow = matchMedia('(max-width: 700px)')
const placeholder = () => {
  els.input.placeholder = narrow.matches ? 'Message Tether' : 'Message Tether (Enter sends, Shift+Enter for a new line)'
}
narrow.addEventListener('change', placeholder)
placeholder()

async function loadModels() {
  const models = await rest((c) => c.listModels())
  const auto = new Option('Default model', '')
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
