// Small DOM and formatting helpers shared by the page's modules.

/** The element with this id; the page's HTML is fixed, so a missing one is a bug. */
export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is missing from index.html`);
  return element as T;
}

type Child = Node | string | null | undefined | false;

/** `h("button", {class: "x", "data-seconds": "3"}, "text", child)`: an element. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Record<string, string | number | boolean | null | undefined> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child) element.append(child);
  }
  return element;
}

/** 214 → "03:34"; 3725 → "1:02:05". */
export function mmss(seconds: number): string {
  const total = Math.max(0, Math.floor(seconds));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const secs = String(total % 60).padStart(2, "0");
  return hours > 0
    ? `${hours}:${String(minutes).padStart(2, "0")}:${secs}`
    : `${String(minutes).padStart(2, "0")}:${secs}`;
}

/** An ISO date as the reader's locale writes it ("3 Dec 2025, 14:05"). */
export function when(iso: string): string {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** Show or hide an element (the `hidden` attribute; CSS keeps `[hidden]` hidden). */
export function show(element: HTMLElement, visible: boolean): void {
  element.hidden = !visible;
}

/** Put a message in an error box and show it; an empty message hides the box. */
export function setMessage(element: HTMLElement, message: string): void {
  element.textContent = message;
  element.hidden = message === "";
}
