/** Real parts for the client's tests: `tether serve` on the echo engine, and a TCP proxy to cut. */

import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'

import type { SocketFactory, WebSocketLike } from 'tether-client'

const here = path.dirname(fileURLToPath(import.meta.url))
export const repoRoot = path.resolve(here, '..', '..', '..', '..')
/** Deadlines scale like the Python suite's (TETHER_TEST_TIMEOUT_SCALE). */
export const scale = Number(process.env['TETHER_TEST_TIMEOUT_SCALE'] ?? '1') || 1
export const scaled = (ms: number): number => ms * scale

function python(): string {
  const configured = process.env['TETHER_PYTHON']
  if (configured !== undefined) return configured
  const venv = path.join(repoRoot, '.venv', 'bin', 'python')
  if (!existsSync(venv)) throw new Error(`no ${venv}: run ./setup.sh first (or set TETHER_PYTHON)`)
  return venv
}

export async function freePort(): Promise<number> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const address = server.address() as net.AddressInfo
  server.close()
  await once(server, 'close')
  return address.port
}

export const nodeSockets: SocketFactory = (url, init) => new WebSocket(url, init) as unknown as WebSocketLike

export class TetherServer {
  readonly dir: string
  readonly port: number
  readonly env: Record<string, string>
  process: ChildProcess | undefined
  private logPath = ''

  private constructor(dir: string, port: number, env: Record<string, string>) {
    this.dir = dir
    this.port = port
    this.env = env
  }

  static async start(env: Record<string, string> = {}): Promise<TetherServer> {
    const dir = mkdtempSync(path.join(tmpdir(), 'tether-client-'))
    const server = new TetherServer(dir, await freePort(), env)
    await server.launch()
    return server
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.port}`
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/ws/chat`
  }

  log(): string {
    return readFileSync(this.logPath, 'utf8')
  }

  /** Start `tether serve` (again, on the same port and database) and wait for /health. */
  async launch(): Promise<void> {
    this.logPath = path.join(this.dir, `serve-${Date.now()}.log`)
    const out = openSync(this.logPath, 'w')
    const env: Record<string, string> = {}
    for (const [key, value] of Object.entries(process.env)) {
      if (value !== undefined && !key.startsWith('TETHER_') && !key.startsWith('MLC_')) env[key] = value
    }
    const args = ['-m', 'tether', 'serve', '--engine', 'echo', '--port', String(this.port)]
    args.push('--db', path.join(this.dir, 'tether.db'))
    const child = spawn(python(), args, { cwd: this.dir, env: { ...env, ...this.env }, stdio: ['ignore', out, out] })
    this.process = child
    const deadline = Date.now() + scaled(60_000)
    for (;;) {
      if (child.exitCode !== null) throw new Error(`tether serve exited with ${child.exitCode}:\n${this.log()}`)
      try {
        const response = await fetch(`${this.httpUrl}/health`)
        if (response.ok) return
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`tether serve did not come up:\n${this.log()}`)
      await new Promise((resolve) => setTimeout(resolve, 50)) // polling another process's readiness; bounded
    }
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.process
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill(signal)
    await exited
  }

  async stop(): Promise<void> {
    await this.kill('SIGTERM')
    rmSync(this.dir, { recursive: true, force: true })
  }
}

/** A TCP proxy in front of the server whose connections the test can cut. */
export class TcpProxy {
  accepted = 0
  private readonly server: net.Server
  private readonly open = new Set<net.Socket>()

  private constructor(upstreamPort: number) {
    this.server = net.createServer((client) => {
      this.accepted += 1
      const upstream = net.connect(upstreamPort, '127.0.0.1')
      for (const [a, b] of [[client, upstream], [upstream, client]] as const) {
        this.open.add(a)
        a.pipe(b)
        a.on('error', () => b.destroy())
        a.on('close', () => {
          this.open.delete(a)
          b.destroy()
        })
      }
    })
  }

  static async start(upstreamPort: number): Promise<TcpProxy> {
    const proxy = new TcpProxy(upstreamPort)
    proxy.server.listen(0, '127.0.0.1')
    await once(proxy.server, 'listening')
    return proxy
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port
  }

  /** Drop every connection now, without a close handshake (like a network failure). */
  cut(): void {
    for (const socket of this.open) socket.resetAndDestroy()
  }

  async close(): Promise<void> {
    this.cut()
    this.server.close()
    await once(this.server, 'close')
  }
}
