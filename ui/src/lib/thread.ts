// Branches of a conversation. Every message of every branch comes from the
// backend; messages that share a parent are alternatives (a regenerated
// reply, an edited question). The screen shows one thread: the path from a
// root to a leaf. A thread is named by an "anchor" message: the thread is
// the path to the newest leaf at or under the anchor, so the anchor may be
// a leaf (the reply just written), a sibling chosen with the switcher, or a
// search hit somewhere in the middle.

import type { MessageId } from "./types";

/** What the branch logic needs of a message. */
export type ThreadNode = { id: MessageId; parent_id: MessageId | null; created_at: number };

export class Tree<M extends ThreadNode> {
  readonly byId = new Map<MessageId, M>();
  /** Children of each message (null: the roots), oldest first. */
  readonly children = new Map<MessageId | null, M[]>();
  /** The newest message of the whole conversation. */
  readonly newest: M | null = null;

  constructor(readonly messages: readonly M[]) {
    for (const m of messages) this.byId.set(m.id, m);
    let newest: M | null = null;
    for (const m of messages) {
      // A message whose parent is missing (should not happen) is shown as a root.
      const parent = m.parent_id !== null && this.byId.has(m.parent_id) ? m.parent_id : null;
      const list = this.children.get(parent);
      if (list) list.push(m);
      else this.children.set(parent, [m]);
      if (newest === null || isNewer(m, newest)) newest = m;
    }
    for (const list of this.children.values()) list.sort((a, b) => (isNewer(a, b) ? 1 : isNewer(b, a) ? -1 : 0));
    this.newest = newest;
  }

  /** The parent as the tree sees it (null for roots and orphans). */
  parentOf(m: M): MessageId | null {
    return m.parent_id !== null && this.byId.has(m.parent_id) ? m.parent_id : null;
  }

  /** The alternatives to `id` (itself included), oldest first, and its place among them. */
  siblings(id: MessageId): { list: M[]; index: number } {
    const m = this.byId.get(id);
    if (!m) return { list: [], index: -1 };
    const list = this.children.get(this.parentOf(m)) ?? [m];
    return { list, index: list.findIndex((s) => s.id === id) };
  }

  /** The newest message at or under `id` (a leaf, since children are newer than parents). */
  newestLeaf(id: MessageId): M | null {
    const start = this.byId.get(id);
    if (!start) return null;
    let best = start;
    const stack: M[] = [start];
    const seen = new Set<MessageId>();
    while (stack.length) {
      const m = stack.pop()!;
      if (seen.has(m.id)) continue;
      seen.add(m.id);
      if (isNewer(m, best)) best = m;
      for (const c of this.children.get(m.id) ?? []) stack.push(c);
    }
    return best;
  }

  /** The path from a root to `id`, root first (empty when `id` is unknown). */
  pathTo(id: MessageId): M[] {
    const path: M[] = [];
    const seen = new Set<MessageId>();
    let m = this.byId.get(id);
    while (m && !seen.has(m.id)) {
      seen.add(m.id);
      path.push(m);
      const parent = this.parentOf(m);
      m = parent === null ? undefined : this.byId.get(parent);
    }
    return path.reverse();
  }

  /**
   * The thread to show for `anchor`: the path to the newest leaf under it.
   * A null or unknown anchor gives the thread of the newest message.
   */
  thread(anchor: MessageId | null): M[] {
    const leaf = (anchor !== null ? this.newestLeaf(anchor) : null) ?? this.newest;
    return leaf ? this.pathTo(leaf.id) : [];
  }

  /**
   * The anchor after moving from message `id` to its sibling `delta` places
   * away (the newest leaf under that sibling), or null when there is none.
   */
  switchTo(id: MessageId, delta: number): MessageId | null {
    const { list, index } = this.siblings(id);
    const target = index < 0 ? undefined : list[index + delta];
    return target ? (this.newestLeaf(target.id)?.id ?? target.id) : null;
  }
}

/** Whether `a` was written after `b` (ids break ties: they only grow). */
export function isNewer(a: ThreadNode, b: ThreadNode): boolean {
  return a.created_at !== b.created_at ? a.created_at > b.created_at : a.id > b.id;
}
