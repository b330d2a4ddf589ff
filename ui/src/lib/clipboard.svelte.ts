// Copying text for the Copy buttons.

/** Puts text on the clipboard; false when that is refused (or there is no clipboard). */
export async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}

/** A Copy button's state: `copied` is true for a moment after a copy worked. */
export class Copier {
  copied = $state(false);
  #timer: ReturnType<typeof setTimeout> | undefined;

  async copy(text: string): Promise<void> {
    if (!(await copyText(text))) {
      this.copied = false;
      return;
    }
    this.copied = true;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => (this.copied = false), 1500);
  }
}
