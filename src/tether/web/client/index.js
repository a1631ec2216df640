/**
 * tether-client: the TypeScript client of Tether (`/ws/chat` protocol v1 and the REST API).
 *
 * - `streamChat` (seed 004): one socket, many turns, events through `onEvent`.
 * - `TetherConnection`: the socket with reconnect + resume; `chat()` returns a `ChatTurn`.
 * - `TetherClient`: REST helpers and connections bound to one server and token.
 */
export * from './frames.js';
export * from './rest.js';
export * from './connection.js';
export * from './stream.js';
export { TetherClient } from './client.js';
