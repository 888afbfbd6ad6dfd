// The npm ollama client's calls against one server, printed as one JSON object.
// Usage: node clients.mjs URL [API_KEY]   (the key goes as Authorization: Bearer)
import { Ollama } from 'ollama'

const [host, apiKey] = process.argv.slice(2)
const client = new Ollama({ host, headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {} })
const messages = [{ role: 'user', content: 'hi' }]
const weather = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
}

async function collect(stream) {
  const parts = []
  for await (const part of stream) parts.push(part)
  return parts
}

async function outcome(call) {
  try {
    return await call()
  } catch (error) {
    return { error: error.error ?? String(error), status_code: error.status_code ?? null }
  }
}

const calls = {
  chat: () => client.chat({ model: 'tiny', messages }),
  chat_stream: async () => collect(await client.chat({ model: 'tiny', messages, stream: true })),
  generate: () => client.generate({ model: 'tiny', prompt: 'hi', options: { num_predict: 4 } }),
  generate_stream: async () => collect(await client.generate({ model: 'tiny', prompt: 'hi', stream: true })),
  embed: () => client.embed({ model: 'tiny', input: ['a', 'b'] }),
  tools_stream: async () => collect(await client.chat({ model: 'tools2', messages, tools: [weather], stream: true })),
  think: () => client.chat({ model: 'tiny', messages, think: true }),
  unknown_model: () => client.chat({ model: 'nope', messages }),
}

const results = {}
for (const [name, call] of Object.entries(calls)) results[name] = await outcome(call)
process.stdout.write(JSON.stringify(results))
