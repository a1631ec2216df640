/**
 * The wire contract of Tether's WebSocket protocol v1 (`/ws/chat`): every client and server
 * frame as a type. All frames are JSON text; a socket carries many requests, interleaved; every
 * server frame names its `request_id` and a `seq` that starts at 0 per request and rises by 1.
 */

/** Generation options of a `chat` frame, as the server names them (unknown ones are refused). */
export interface ChatOptionsV1 {
  model?: string
  temperature?: number
  top_p?: number
  max_tokens?: number
  seed?: number
  stop?: string | string[]
  tools?: boolean
  show_thoughts?: boolean
  token_delay_ms?: number
}

export interface ChatFrame {
  type: 'chat'
  request_id: string
  text: string
  session_id?: string
  agent_id?: string
  parent_id?: string
  /** A user message of `session_id` to put this one beside (an edit: same parent, so a
   * session's first message too); not with `parent_id`. */
  sibling_of?: string
  options?: ChatOptionsV1
}

/** Answer a stored user message again: a new answer beside the earlier ones. */
export interface RegenerateFrame {
  type: 'regenerate'
  request_id: string
  session_id: string
  message_id: string
  options?: ChatOptionsV1
}

export interface CancelFrame {
  type: 'cancel'
  request_id: string
  /** The resume token of the request's `processing` frame (needed from another socket). */
  token?: string
}

export interface ResumeFrame {
  type: 'resume'
  request_id: string
  after_seq?: number
  /** The resume token of the request's `processing` frame, when the server gave one. */
  token?: string
}

export interface PingFrame {
  type: 'ping'
  request_id?: string
}

export type ClientFrame = ChatFrame | RegenerateFrame | CancelFrame | ResumeFrame | PingFrame

export type FinishReason = 'stop' | 'length' | 'cancelled' | 'tool_loop_limit' | 'interrupted'

export interface Usage {
  prompt_tokens: number
  completion_tokens: number
}

export interface Timings {
  ttft_ms: number | null
  tokens_per_s: number | null
  total_ms: number
}

export interface ProcessingMetadata {
  session_id: string
  user_message_id: string
  model: string
  queue_position: number
  created_session?: boolean
  /** Sent back in `resume` when present (a server that guards resume from other sockets). */
  resume_token?: string
  token?: string
  [key: string]: unknown
}

export interface CompleteMetadata {
  message_id: string
  finish_reason: FinishReason
  usage: Usage
  timings: Timings
  recovered?: boolean
  trimmed_messages?: number
  [key: string]: unknown
}

export interface ToolCallData {
  id: string
  name: string
  arguments: unknown
}

export interface ToolResultData {
  id: string
  name: string
  result?: unknown
  error?: string
  duration_ms: number
}

export interface ErrorBody {
  code: string
  message: string
}

interface FrameBase {
  request_id: string
  seq: number
}

export interface ProcessingServerFrame extends FrameBase {
  status: 'processing'
  chunk: { metadata: ProcessingMetadata }
}

export interface ChunkServerFrame extends FrameBase {
  status: 'chunk'
  chunk: { type: 'text' | 'thinking'; data: string }
}

export interface ToolServerFrame extends FrameBase {
  status: 'tool'
  chunk: { type: 'tool_call'; data: ToolCallData } | { type: 'tool_result'; data: ToolResultData }
}

export interface CompleteServerFrame extends FrameBase {
  status: 'complete'
  chunk: { metadata: CompleteMetadata }
}

export interface ErrorServerFrame extends FrameBase {
  status: 'error'
  error: ErrorBody
}

export interface PongServerFrame extends FrameBase {
  status: 'pong'
}

export type ServerFrame =
  | ProcessingServerFrame
  | ChunkServerFrame
  | ToolServerFrame
  | CompleteServerFrame
  | ErrorServerFrame
  | PongServerFrame

/** Parse a server frame's text; null when it is not a v1 server frame. */
export function parseServerFrame(text: string): ServerFrame | null {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return null
  }
  if (typeof value !== 'object' || value === null) return null
  const frame = value as Record<string, unknown>
  if (typeof frame['request_id'] !== 'string' || typeof frame['seq'] !== 'number') return null
  const status = frame['status']
  if (status === 'error') {
    return typeof frame['error'] === 'object' && frame['error'] !== null
      ? (frame as unknown as ErrorServerFrame)
      : null
  }
  if (status === 'pong') return frame as unknown as PongServerFrame
  if (status === 'processing' || status === 'chunk' || status === 'tool' || status === 'complete') {
    return typeof frame['chunk'] === 'object' && frame['chunk'] !== null
      ? (frame as unknown as ServerFrame)
      : null
  }
  return null
}
