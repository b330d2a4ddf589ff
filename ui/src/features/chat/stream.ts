// The text of replies being written, from `token` events. A reply whose
// `reply_started` was seen is known whole; one that was already under way
// when the chat screen opened is known only from what the history had
// stored (written every 250 ms, so it lags the events) plus the tokens that
// arrived since: the two overlap; each token says where it starts in the
// reply, which places them exactly (`mergeStream` guesses the overlap when
// the stored text does not reach the first token seen).

import type { MessageId } from "../../lib/types";

/**
 * `stored` (the start of a reply, as stored) joined with `received` (the
 * tokens seen since some point): `stored` ends with the start of `received`
 * when the two overlap; the longest overlap is taken.
 */
export function mergeStream(stored: string, received: string): string {
  for (let k = Math.min(stored.length, received.length); k > 0; k--) {
    if (stored.endsWith(received.slice(0, k))) return stored + received.slice(k);
  }
  return stored + received;
}

/** A reply's text as followed: whole from its start, or from `from` on. */
type Live = { text: string; whole: boolean; from?: number };

export class LiveReplies {
  private live = new Map<MessageId, Live>();
  private ended = new Set<MessageId>();

  /** A reply starts (`reply_started`): every token of it will be seen. */
  start(id: MessageId) {
    this.ended.delete(id);
    this.live.set(id, { text: "", whole: true });
  }

  /** A token of reply `id`, starting at `offset` (UTF-16 units) of the reply. */
  push(id: MessageId, piece: string, offset?: number) {
    let entry = this.live.get(id);
    if (!entry) {
      if (this.ended.has(id)) return;
      entry = { text: "", whole: false, from: offset };
      this.live.set(id, entry);
    }
    entry.text += piece;
  }

  /** The reply is finished, stopped or failed. */
  end(id: MessageId) {
    this.live.delete(id);
    this.ended.add(id);
    if (this.ended.size > 1000) this.ended.delete(this.ended.values().next().value!);
  }

  hasEnded(id: MessageId): boolean {
    return this.ended.has(id);
  }

  /** The text of reply `id` so far, if it is being followed. */
  text(id: MessageId): string | undefined {
    return this.live.get(id)?.text;
  }

  /**
   * The text to show for reply `id` whose stored text is `stored` (from
   * opening the conversation); later tokens append to it.
   */
  resume(id: MessageId, stored: string): string {
    const entry = this.live.get(id);
    if (entry?.whole) return entry.text;
    // The first token seen says where it starts: exact when the stored
    // text reaches it; otherwise (pieces stored after it, or a gap) the
    // overlap is guessed.
    const from = entry?.from;
    const text =
      entry && from !== undefined && from <= stored.length
        ? stored.slice(0, from) + entry.text
        : mergeStream(stored, entry?.text ?? "");
    this.live.set(id, { text, whole: true });
    return text;
  }
}
