import type { AppSettings, Conversation, LocalModel } from "../../lib/types";

/**
 * The welcome page is for a first start: no model installed, no
 * conversation, and no default model set (a default model that is a file
 * path counts as a choice already made).
 */
export function isFirstRun(settings: AppSettings | null, installed: LocalModel[], conversations: Conversation[]): boolean {
  return installed.length === 0 && conversations.length === 0 && !settings?.default_model;
}
