// The images attached to a message being written: each is checked by the
// backend as soon as it is attached (format, size, that it decodes) and
// shows as a thumbnail, or as an error naming the file.

import { api, errorText } from "../../lib/api";
import type { ImageInput, ImagePreview } from "../../lib/types";
import { MAX_IMAGE_BYTES, baseName, blobToInput, formatSize } from "./images";

export type Attached = {
  key: number;
  /** The file's name (or "Pasted image"). */
  name: string;
  state: "checking" | "ready" | "error";
  input: ImageInput | null;
  preview: ImagePreview | null;
  error: string;
};

let nextKey = 1;

export class Attachments {
  items: Attached[] = $state.raw([]);

  get ready(): Attached[] {
    return this.items.filter((i) => i.state === "ready");
  }

  get checking(): boolean {
    return this.items.some((i) => i.state === "checking");
  }

  get isEmpty(): boolean {
    return this.items.length === 0;
  }

  /** The inputs of the images that passed their check, for a request. */
  inputs(): ImageInput[] {
    return this.ready.map((i) => i.input!);
  }

  /** A path the user dropped or picked (granted to the backend). */
  addPath(path: string): Promise<void> {
    return this.add(baseName(path), async () => ({ kind: "path", path }));
  }

  /** A file from the file input or the clipboard. */
  addFile(file: File, name = file.name || "Pasted image"): Promise<void> {
    if (file.size > MAX_IMAGE_BYTES) {
      this.items = [
        ...this.items,
        {
          key: nextKey++,
          name,
          state: "error",
          input: null,
          preview: null,
          error: `${name} is ${formatSize(file.size)}; images up to ${formatSize(MAX_IMAGE_BYTES)} can be attached`,
        },
      ];
      return Promise.resolve();
    }
    return this.add(name, () => blobToInput(file));
  }

  remove(key: number) {
    this.items = this.items.filter((i) => i.key !== key);
  }

  clear() {
    this.items = [];
  }

  private async add(name: string, read: () => Promise<ImageInput>) {
    const key = nextKey++;
    this.items = [...this.items, { key, name, state: "checking", input: null, preview: null, error: "" }];
    try {
      const input = await read();
      const preview = await api.previewImage(input);
      this.update(key, { state: "ready", input, preview });
    } catch (e) {
      const message = errorText(e);
      this.update(key, { state: "error", error: message.includes(name) ? message : `${name}: ${message}` });
    }
  }

  private update(key: number, patch: Partial<Attached>) {
    this.items = this.items.map((i) => (i.key === key ? { ...i, ...patch } : i));
  }
}
