import { describe, expect, it } from "vitest";
import { Tree, type ThreadNode } from "./thread";

// A conversation with branches (times are the ids unless given):
//
//   1 Q ── 2 A ── 3 Q2 ── 4 A2
//          │             └ 7 A2 (regenerated)
//          └ 5 A (regenerated) ── 6 Q3
//   8 Q (edited first question) ── 9 A
const m = (id: number, parent_id: number | null, created_at = id): ThreadNode => ({ id, parent_id, created_at });
const conversation = [m(1, null), m(2, 1), m(3, 2), m(4, 3), m(5, 1), m(6, 5), m(7, 3), m(8, null), m(9, 8)];
const ids = (list: ThreadNode[]) => list.map((x) => x.id);

describe("Tree", () => {
  it("shows the thread of the newest message by default", () => {
    const tree = new Tree(conversation);
    expect(ids(tree.thread(null))).toEqual([8, 9]);
    // Without the edited first question the newest is the regenerated A2.
    expect(ids(new Tree(conversation.slice(0, 7)).thread(null))).toEqual([1, 2, 3, 7]);
  });

  it("lists siblings oldest first with the message's place", () => {
    const tree = new Tree(conversation);
    expect(ids(tree.siblings(5).list)).toEqual([2, 5]);
    expect(tree.siblings(5).index).toBe(1);
    expect(ids(tree.siblings(1).list)).toEqual([1, 8]);
    expect(ids(tree.siblings(6).list)).toEqual([6]);
    expect(tree.siblings(42)).toEqual({ list: [], index: -1 });
  });

  it("switches to the newest leaf under the chosen sibling", () => {
    const tree = new Tree(conversation);
    // From the edited question back to the first one: its newest leaf is 7.
    expect(tree.switchTo(8, -1)).toBe(7);
    expect(ids(tree.thread(tree.switchTo(8, -1)))).toEqual([1, 2, 3, 7]);
    // From A (2) to its regenerated sibling (5): the thread continues to Q3.
    expect(ids(tree.thread(tree.switchTo(2, 1)))).toEqual([1, 5, 6]);
    // Between the two A2 replies.
    expect(ids(tree.thread(tree.switchTo(7, -1)))).toEqual([1, 2, 3, 4]);
    // Past either end there is nothing.
    expect(tree.switchTo(2, -1)).toBeNull();
    expect(tree.switchTo(7, 1)).toBeNull();
  });

  it("shows the branch holding a message in the middle of an old branch (a search hit)", () => {
    const tree = new Tree(conversation);
    expect(ids(tree.thread(2))).toEqual([1, 2, 3, 7]);
    expect(ids(tree.thread(4))).toEqual([1, 2, 3, 4]);
    expect(ids(tree.thread(5))).toEqual([1, 5, 6]);
    // An unknown anchor (deleted, or another conversation's) falls back to the newest.
    expect(ids(tree.thread(99))).toEqual([8, 9]);
  });

  it("orders by time before id, and copes with orphans and cycles", () => {
    // 3 was written after 4 although its id is smaller.
    const tree = new Tree([m(1, null, 1), m(3, 1, 30), m(4, 1, 20)]);
    expect(ids(tree.siblings(3).list)).toEqual([4, 3]);
    expect(ids(tree.thread(null))).toEqual([1, 3]);
    // A message whose parent is missing is a root.
    expect(ids(new Tree([m(5, 2), m(6, 5)]).thread(null))).toEqual([5, 6]);
    expect(ids(new Tree([m(5, 2), m(6, 5)]).siblings(5).list)).toEqual([5]);
    // A (corrupt) cycle does not loop forever.
    expect(new Tree([m(1, 2), m(2, 1)]).pathTo(1).length).toBeLessThanOrEqual(2);
    expect(new Tree([]).thread(null)).toEqual([]);
  });
});
