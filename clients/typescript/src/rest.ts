/**
 * Tether's REST API: agents, sessions and their messages, models, tools, health.
 *
 * Every helper takes a base URL (`http://127.0.0.1:8000`) or `RestOptions`; without one it uses
 * the page's origin in a browser and `http://localhost:8000` elsewhere. A non-2xx answer rejects
 * with `TetherError` carrying the server's `{"error": {"code", "message"}}` (or `http_<status>`).
 */

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>

export interface RestOptions {
  baseUrl?: string
  /** Bearer token (`server.token`), sent as `Authorization: Bearer <token>`. */
  token?: string
  /** A fetch to use instead of the global one. */
  fetch?: FetchLike
}

export type RestTarget = string | RestOptions | undefined

export class TetherError extends Error {
  readonly code: string
  readonly status: number | undefined

  constructor(code: string, message: string, status?: number) {
    super(message)
    this.name = 'TetherError'
    this.code = code
    this.status = status
  }
}

export interface Agent {
  id: string
  name: string
  system_prompt: string
  markdown_context: string
  default_options: Record<string, unknown>
  created_at: string
  updated_at: string
}

/** What `updateAgent` sends: the agent's id and the fields to store (PUT upserts). */
export interface AgentInput {
  id: string
  name: string
  system_prompt?: string
  markdown_context?: string
  default_options?: Record<string, unknown>
}

export interface Session {
  id: string
  title: string
  agent_id: string | null
  created_at: string
  updated_at: string
  /** The last message of the branch the session shows (null: no message yet). */
  active_leaf_id: string | null
}

/** One hit of `GET /search`: `snippet` marks the matched words with `<mark>`…`</mark>` and is
 * otherwise the stored text as is (not HTML-escaped): show it as text, never as HTML. */
export interface SearchResult {
  message_id: string
  session_id: string
  session_title: string
  role: string
  snippet: string
  created_at: string
  rank: number
}

export interface StoredToolCall {
  id: string
  name: string
  arguments: unknown
}

export interface StoredMessage {
  id: string
  session_id: string
  parent_id: string | null
  role: 'system' | 'user' | 'assistant' | 'tool'
  content: string
  status: string
  created_at: string
  name?: string | null
  tool_call_id?: string | null
  tool_calls?: StoredToolCall[]
  model?: string | null
  finish_reason?: string | null
  usage?: { prompt_tokens: number | null; completion_tokens: number | null }
  /** Ids of the messages under this one. */
  children: string[]
  /** Ids of the messages under this one's parent, itself included, oldest first: edits of a
   * user message, regenerations of an answer. */
  siblings: string[]
}

/** Where a message stands among its siblings (what a "‹ 2/3 ›" switcher shows). */
export interface SiblingPosition {
  /** 1-based. */
  index: number
  count: number
  previous: string | undefined
  next: string | undefined
}

export function siblingPosition(message: Pick<StoredMessage, 'id' | 'siblings'>): SiblingPosition {
  const at = message.siblings.indexOf(message.id)
  return {
    index: at + 1,
    count: message.siblings.length,
    previous: at > 0 ? message.siblings[at - 1] : undefined,
    next: at >= 0 && at < message.siblings.length - 1 ? message.siblings[at + 1] : undefined,
  }
}

export interface ModelInfo {
  id: string
  engine: string
  loaded: boolean
  path: string | null
  tools: boolean
}

export interface ToolSpec {
  name: string
  description: string
  parameters: Record<string, unknown>
}

export interface Health {
  status: string
  version: string
  protocol: number | string
  engine: string
  mcp: Record<string, string>
}

function defaultBaseUrl(): string {
  const location = (globalThis as { location?: { origin?: string } }).location
  return location?.origin !== undefined && location.origin !== 'null'
    ? location.origin
    : 'http://localhost:8000'
}

export function restOptions(target: RestTarget): Required<Pick<RestOptions, 'baseUrl'>> & RestOptions {
  const options = typeof target === 'string' ? { baseUrl: target } : { ...(target ?? {}) }
  return { ...options, baseUrl: (options.baseUrl ?? defaultBaseUrl()).replace(/\/+$/, '') }
}

async function errorOf(response: Response): Promise<TetherError> {
  let code = `http_${response.status}`
  let message = `${response.status} ${response.statusText}`.trim()
  try {
    const body = (await response.json()) as { error?: { code?: unknown; message?: unknown } }
    if (typeof body.error?.code === 'string') code = body.error.code
    if (typeof body.error?.message === 'string') message = body.error.message
  } catch {
    // not a JSON error body: the status says it
  }
  return new TetherError(code, message, response.status)
}

/** One REST call; resolves to the parsed JSON body, or undefined for 204. */
export async function request<T>(
  target: RestTarget,
  method: string,
  path: string,
  body?: unknown
): Promise<T> {
  const options = restOptions(target)
  const headers: Record<string, string> = {}
  if (options.token !== undefined) headers['Authorization'] = `Bearer ${options.token}`
  const init: RequestInit = { method, headers }
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json'
    init.body = JSON.stringify(body)
  }
  const doFetch: FetchLike = options.fetch ?? ((input, init) => globalThis.fetch(input, init))
  let response: Response
  try {
    response = await doFetch(`${options.baseUrl}${path}`, init)
  } catch (cause) {
    throw new TetherError('unreachable', `${method} ${options.baseUrl}${path}: ${String(cause)}`)
  }
  if (!response.ok) throw await errorOf(response)
  if (response.status === 204) return undefined as T
  return (await response.json()) as T
}

const seg = encodeURIComponent

/** `(id, target)` or `(baseUrl, id)`: the base URL is the one with a scheme. */
function idAndTarget(first: string, second: RestTarget): [string, RestTarget] {
  return typeof second === 'string' && /^[a-z][a-z0-9+.-]*:\/\//i.test(first) ? [second, first] : [first, second]
}

export function listAgents(target?: RestTarget): Promise<Agent[]> {
  return request(target, 'GET', '/agents')
}

/** `getAgent(id, options?)`, or `getAgent(baseUrl, id)` like `listAgents(baseUrl)`. */
export function getAgent(id: string, target?: RestTarget): Promise<Agent>
export function getAgent(baseUrl: string, id: string): Promise<Agent>
export function getAgent(first: string, second?: RestTarget): Promise<Agent> {
  const [id, target] = idAndTarget(first, second)
  return request(target, 'GET', `/agents/${seg(id)}`)
}

/** Create or replace an agent (the server upserts on PUT). */
export function updateAgent(agent: AgentInput, target?: RestTarget): Promise<Agent> {
  const { id, ...fields } = agent
  return request(target, 'PUT', `/agents/${seg(id)}`, fields)
}

export function deleteAgent(id: string, target?: RestTarget): Promise<void>
export function deleteAgent(baseUrl: string, id: string): Promise<void>
export function deleteAgent(first: string, second?: RestTarget): Promise<void> {
  const [id, target] = idAndTarget(first, second)
  return request(target, 'DELETE', `/agents/${seg(id)}`)
}

export function listSessions(
  target?: RestTarget,
  page: { limit?: number; offset?: number } = {}
): Promise<Session[]> {
  const query = new URLSearchParams()
  if (page.limit !== undefined) query.set('limit', String(page.limit))
  if (page.offset !== undefined) query.set('offset', String(page.offset))
  const encoded = query.toString()
  const suffix = encoded === '' ? '' : `?${encoded}`
  return request(target, 'GET', `/sessions${suffix}`)
}

export function createSession(
  target?: RestTarget,
  fields: { title?: string; agent_id?: string } = {}
): Promise<Session> {
  return request(target, 'POST', '/sessions', fields)
}

export function getSession(id: string, target?: RestTarget): Promise<Session> {
  return request(target, 'GET', `/sessions/${seg(id)}`)
}

/** The session's active branch, root to active leaf; `{tree: true}`: every message, oldest first. */
export function listMessages(
  sessionId: string,
  target?: RestTarget,
  which: { tree?: boolean } = {}
): Promise<StoredMessage[]> {
  const suffix = which.tree === true ? '?tree=true' : ''
  return request(target, 'GET', `/sessions/${seg(sessionId)}/messages${suffix}`)
}

/** Make the branch through `messageId` the session's active one, down to its newest leaf
 * (what `listMessages` and the next turn without a parent follow); resolves to the session. */
export function setActiveBranch(sessionId: string, messageId: string, target?: RestTarget): Promise<Session> {
  return request(target, 'PUT', `/sessions/${seg(sessionId)}/active`, { message_id: messageId })
}

export function renameSession(id: string, title: string, target?: RestTarget): Promise<Session> {
  return request(target, 'PATCH', `/sessions/${seg(id)}`, { title })
}

/** Full-text search over stored messages, best first. */
export async function searchMessages(
  q: string,
  target?: RestTarget,
  filter: { limit?: number; session_id?: string } = {}
): Promise<SearchResult[]> {
  const query = new URLSearchParams({ q })
  if (filter.limit !== undefined) query.set('limit', String(filter.limit))
  if (filter.session_id !== undefined) query.set('session_id', filter.session_id)
  const body = await request<{ results: SearchResult[] }>(target, 'GET', `/search?${query}`)
  return body.results
}

export function deleteSession(id: string, target?: RestTarget): Promise<void> {
  return request(target, 'DELETE', `/sessions/${seg(id)}`)
}

export function listModels(target?: RestTarget): Promise<ModelInfo[]> {
  return request(target, 'GET', '/models')
}

export function listTools(target?: RestTarget): Promise<ToolSpec[]> {
  return request(target, 'GET', '/tools')
}

export function health(target?: RestTarget): Promise<Health> {
  return request(target, 'GET', '/health')
}
