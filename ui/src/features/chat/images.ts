// Images attached from the browser side (file input, clipboard): read as
// bytes and sent to Rust as base64. The conversion works in slices and
// yields to the event loop between them, so a large photo does not freeze
// the window (and never spreads a big array into String.fromCharCode).

import type { ImageInput } from "../../lib/types";

/** What the file input accepts (the formats the backend reads). */
export const IMAGE_ACCEPT = "image/png,image/jpeg,image/webp,image/gif,image/bmp";

/** The backend's limit for one image (lumen-store MAX_ATTACHMENT_BYTES). */
export const MAX_IMAGE_BYTES = 64 << 20;

/**
 * Bytes per slice: a multiple of 3, so the slices' base64 joins without
 * padding, and few enough to pass as arguments (engines cap their number).
 */
const SLICE = 3 * 0x2000;
/** Slices converted between two yields (about 1 MB). */
const SLICES_PER_TURN = 42;

const nextTurn = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/** Standard base64 of `bytes`, converted a slice at a time. */
export async function bytesToBase64(bytes: Uint8Array): Promise<string> {
  const parts: string[] = [];
  for (let start = 0, n = 0; start < bytes.length; start += SLICE, n++) {
    const slice = bytes.subarray(start, start + SLICE);
    parts.push(btoa(String.fromCharCode.apply(null, slice as unknown as number[])));
    if (n % SLICES_PER_TURN === SLICES_PER_TURN - 1) await nextTurn();
  }
  return parts.join("");
}

/** The bytes of a file or blob. */
export function readBytes(blob: Blob): Promise<Uint8Array> {
  if (typeof blob.arrayBuffer === "function") return blob.arrayBuffer().then((b) => new Uint8Array(b));
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(new Uint8Array(reader.result as ArrayBuffer));
    reader.onerror = () => reject(reader.error ?? new Error("could not read the file"));
    reader.readAsArrayBuffer(blob);
  });
}

/** An image from the browser, ready for the backend. */
export async function blobToInput(blob: Blob): Promise<ImageInput> {
  return { kind: "bytes", base64: await bytesToBase64(await readBytes(blob)) };
}

/** The images among pasted clipboard items. */
export function clipboardImages(data: DataTransfer | null): File[] {
  if (!data) return [];
  const files: File[] = [];
  for (const item of Array.from(data.items ?? [])) {
    if (item.kind === "file" && item.type.startsWith("image/")) {
      const file = item.getAsFile();
      if (file) files.push(file);
    }
  }
  if (!files.length) for (const file of Array.from(data.files ?? [])) if (file.type.startsWith("image/")) files.push(file);
  return files;
}

/** The last part of a path (either separator). */
export function baseName(path: string): string {
  return path.split(/[\\/]/).filter(Boolean).pop() ?? path;
}

/** Whether a dropped path looks like an image the app reads (by its extension). */
export function looksLikeImage(path: string): boolean {
  return /\.(png|jpe?g|webp|gif|bmp)$/i.test(path);
}

/** 1.2 MB, 340 KB (decimal units). */
export function formatSize(bytes: number): string {
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  if (bytes >= 1e3) return `${Math.round(bytes / 1e3)} KB`;
  return `${bytes} B`;
}
