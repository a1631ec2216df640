/**
 * Seed 004's client code, as its users wrote it (only the package name differs): it must compile
 * against tether-client and run against a real server.
 */

import { listAgents, getAgent, updateAgent, deleteAgent, streamChat, type Agent, type ChatEvent } from 'tether-client'
import type { SocketFactory } from 'tether-client'

export async function seedUsage(httpUrl: string, wsUrl: string, socketFactory: SocketFactory, out: string[]): Promise<void> {
  const upserted: Agent = await updateAgent(
    {
      id: 'reviewer',
      name: 'Reviewer',
      system_prompt: 'You are Reviewer, a precise PR reviewer.',
      markdown_context: '- Keep responses focused on regressions.\n',
    },
    httpUrl
  )
  const agents = await listAgents(httpUrl)
  const primary = agents[0]
  if (primary === undefined || primary.id !== upserted.id) throw new Error('the agent is not listed')
  await getAgent(httpUrl, primary.id)

  const { sendMessage, stop } = await streamChat({
    backendUrl: wsUrl,
    agentId: primary.id,
    options: { temperature: 0.2, maxNewTokens: 400 },
    socketFactory,
    onEvent: (event: ChatEvent) => {
      if (event.type === 'token') out.push(event.token)
      if (event.type === 'error') console.error(event.message)
      if (event.type === 'done') out.push('\n')
    },
  })

  // Send as many turns as you like over the same socket
  await sendMessage({ message: 'Summarize the latest run.' })
  await sendMessage({
    message: 'Now give me the key risks.',
    options: { temperature: 0.1 },
  })

  // When finished, close the stream
  stop()
  await deleteAgent(httpUrl, 'reviewer')
}
