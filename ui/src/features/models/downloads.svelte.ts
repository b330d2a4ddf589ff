// The downloads a screen shows: one row per download id, driven by
// `core://event` {type: "download"} events. Each screen that shows downloads
// makes its own tracker (listen first, then restore what is already running).
import { api, errorText, onCoreEvent } from "../../lib/api";
import { formatBytes, formatDuration, formatSpeed } from "../../lib/format";
import type { CoreEvent, DownloadEvent, DownloadStatus } from "../../lib/types";

export type DownloadState =
  | "starting"
  | "downloading"
  | "paused"
  | "verifying"
  | "retrying"
  | "finished"
  | "failed"
  | "cancelled";

export type DownloadRow = {
  id: number;
  spec: string;
  state: DownloadState;
  done: number;
  total: number;
  /** Bytes per second, from the last progress event. */
  speed: number;
  eta: number | null;
  /** What is happening, for failed / retrying / verifying. */
  detail: string;
  /** The failure code, for failed. */
  code: string;
  /** A command (pause, resume, cancel) that failed. */
  error: string;
};

/** Whether a download in this state still uses the network or the disk. */
export const isActive = (s: DownloadState) => s !== "finished" && s !== "failed" && s !== "cancelled";

/** A short, human description of a row's state. */
export function describe(row: DownloadRow): string {
  switch (row.state) {
    case "starting":
      return "Starting…";
    case "downloading":
      return "Downloading";
    case "paused":
      return "Paused";
    case "verifying":
      return "Checking the part already downloaded…";
    case "retrying":
      return `Connection trouble, retrying: ${row.detail}`;
    case "finished":
      return "Installed";
    case "failed":
      return `Failed: ${row.detail}`;
    case "cancelled":
      return "Cancelled";
  }
}

/** How far a row is: "1.2 GB of 4.0 GB · 12 MB/s · 3 min left" (speed and time only while downloading). */
export function progressText(row: DownloadRow): string {
  const parts: string[] = [];
  if (row.total > 0) parts.push(`${formatBytes(row.done)} of ${formatBytes(row.total)}`);
  if (row.state === "downloading" && row.speed > 0) parts.push(formatSpeed(row.speed));
  const eta = row.state === "downloading" ? formatDuration(row.eta) : "";
  if (eta) parts.push(`${eta} left`);
  return parts.join(" · ");
}

function blank(id: number, spec: string): DownloadRow {
  return { id, spec, state: "starting", done: 0, total: 0, speed: 0, eta: null, detail: "", code: "", error: "" };
}

/** The row stopped moving (paused or ended): no speed, no time left. */
function halt(row: DownloadRow): void {
  row.speed = 0;
  row.eta = null;
}

/** Folds one event into a row. */
export function apply(row: DownloadRow, e: DownloadEvent): void {
  switch (e.kind) {
    case "started":
      row.total = e.total;
      if (!row.spec) row.spec = e.repo;
      if (row.state === "starting") row.state = "downloading";
      break;
    case "progress":
      row.done = e.done;
      row.total = e.total;
      row.speed = e.bytes_per_s;
      row.eta = e.eta_s;
      // A progress event already on its way when the pause landed does not unpause.
      if (row.state !== "paused") row.state = "downloading";
      break;
    case "verifying":
      row.state = "verifying";
      row.detail = e.file;
      break;
    case "retrying":
      row.state = "retrying";
      row.detail = e.reason;
      break;
    case "file_done":
      break;
    case "paused":
      row.state = "paused";
      halt(row);
      break;
    case "resumed":
      row.state = "downloading";
      break;
    case "finished":
      row.state = "finished";
      row.done = row.total = Math.max(row.total, row.done);
      halt(row);
      break;
    case "failed":
      row.state = "failed";
      row.detail = e.message;
      row.code = e.code;
      halt(row);
      break;
    case "cancelled":
      row.state = "cancelled";
      break;
  }
}

export class Downloads {
  rows: DownloadRow[] = $state([]);
  /** The last state change, for a live region (not every progress tick). */
  announcement = $state("");
  /** Called with a row once it has finished (the model is installed). */
  onfinished: ((row: DownloadRow) => void) | null = null;

  find(id: number): DownloadRow | undefined {
    return this.rows.find((r) => r.id === id);
  }

  /** The newest row for a spec, if any. */
  forSpec(spec: string): DownloadRow | undefined {
    for (let i = this.rows.length - 1; i >= 0; i--) if (this.rows[i].spec === spec) return this.rows[i];
    return undefined;
  }

  handle(e: CoreEvent): void {
    if (e.type !== "download") return;
    let row = this.find(e.id);
    if (!row) {
      // Started elsewhere (another screen, before this one listened): adopt it.
      if (e.event.kind === "cancelled") return;
      this.rows.push(blank(e.id, ""));
      row = this.rows[this.rows.length - 1];
    }
    const before = row.state;
    apply(row, e.event);
    if (row.state === "cancelled") this.rows = this.rows.filter((r) => r.id !== e.id);
    if (row.state !== before || e.event.kind === "retrying") this.announce(row);
    if (row.state === "finished" && before !== "finished") this.onfinished?.(row);
  }

  private announce(row: DownloadRow) {
    this.announcement = `${row.spec || `Download ${row.id}`}: ${describe(row)}`;
  }

  /** Subscribes to core events; call before `restore` so nothing is missed. */
  listen(): Promise<() => void> {
    return onCoreEvent((e) => this.handle(e));
  }

  /** Adds rows for the downloads the backend already runs (and the failed ones). */
  async restore(): Promise<void> {
    const list: DownloadStatus[] = await api.downloads();
    for (const d of list) {
      const existing = this.find(d.id);
      if (existing) {
        if (!existing.spec) existing.spec = d.spec;
        continue;
      }
      if (!d.active && d.last?.kind !== "failed") continue;
      const row = blank(d.id, d.spec);
      row.state = "downloading";
      if (d.last) apply(row, d.last);
      this.rows.push(row);
    }
  }

  /** Starts a download; throws the command's error. */
  async start(spec: string): Promise<DownloadRow> {
    const id = await api.download(spec);
    let row = this.find(id);
    if (row) row.spec = spec;
    else {
      this.rows.push(blank(id, spec));
      row = this.rows[this.rows.length - 1];
    }
    this.announcement = `${spec}: download started`;
    return row;
  }

  private async command(row: DownloadRow, f: (id: number) => Promise<void>, after?: DownloadState) {
    row.error = "";
    try {
      await f(row.id);
      // The event confirms it; this keeps the buttons right if it is late.
      if (after && isActive(row.state)) {
        if (after === "cancelled") this.rows = this.rows.filter((r) => r.id !== row.id);
        else row.state = after;
      }
    } catch (e) {
      row.error = errorText(e);
    }
  }

  pause(row: DownloadRow) {
    return this.command(row, api.pause, "paused");
  }
  resume(row: DownloadRow) {
    return this.command(row, api.resume, "downloading");
  }
  cancel(row: DownloadRow) {
    return this.command(row, api.cancel, "cancelled");
  }

  /** Starts a failed download again (it resumes from the part on disk). */
  async retry(row: DownloadRow): Promise<void> {
    row.error = "";
    try {
      const spec = row.spec;
      this.dismiss(row);
      await this.start(spec);
    } catch (e) {
      row.error = errorText(e);
      if (!this.find(row.id)) this.rows.push(row);
    }
  }

  dismiss(row: DownloadRow) {
    this.rows = this.rows.filter((r) => r.id !== row.id);
  }
}
