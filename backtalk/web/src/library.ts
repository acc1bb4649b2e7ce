// The library strip (every ingested video, and collections) and which videos are chosen.
//
// A click chooses one video; Ctrl/⌘-click adds or removes one; a collection chooses all
// of its videos. The "focus" video is the one on the stage (and whose history shows).

import { api, type Collection, type Video } from "./api";
import { byId, h, mmss, setMessage } from "./dom";

export class Library {
  videos: Video[] = [];
  /** The chosen videos' keys, in the order they were chosen. */
  selection: string[] = [];
  focus: string | null = null;

  private collections: Collection[] = [];
  private locked = false;
  private readonly list = byId("library");
  private readonly collectionList = byId("collections");
  private readonly status = byId("library-status");

  /** `onChange()`: the selection or the focus changed. */
  constructor(private readonly onChange: () => void) {}

  byKey(key: string): Video | undefined {
    return this.videos.find((v) => v.key === key);
  }

  get selected(): Video[] {
    return this.selection.map((key) => this.byKey(key)).filter((v): v is Video => v !== undefined);
  }

  get focused(): Video | null {
    return (this.focus && this.byKey(this.focus)) || null;
  }

  /** Reload the videos and collections from the server. */
  async refresh(): Promise<void> {
    try {
      [this.videos, this.collections] = await Promise.all([api.videos(), api.collections()]);
      setMessage(
        this.status,
        this.videos.length
          ? ""
          : "Your library is empty: paste a YouTube link above to add a video.",
      );
    } catch (error) {
      setMessage(this.status, (error as Error).message);
    }
    this.selection = this.selection.filter((key) => this.byKey(key));
    if (this.focus && !this.byKey(this.focus)) this.focus = this.selection[0] ?? null;
    this.render();
  }

  /** Choose these videos; `focus` (default the first) goes on the stage. */
  select(keys: string[], focus: string | null = keys[0] ?? null): void {
    this.selection = keys.filter((key, i) => keys.indexOf(key) === i && this.byKey(key));
    this.focus =
      focus !== null && this.selection.includes(focus) ? focus : (this.selection[0] ?? null);
    this.render();
    this.onChange();
  }

  /** Put one of the chosen videos on the stage without changing the selection. */
  setFocus(key: string): void {
    if (this.focus === key || !this.selection.includes(key)) return;
    this.focus = key;
    this.render();
    this.onChange();
  }

  /** While a conversation runs its videos are fixed: changing them needs a new session. */
  setLocked(locked: boolean): void {
    this.locked = locked;
    this.render();
  }

  private render(): void {
    this.list.replaceChildren(...this.videos.map((video) => this.item(video)));
    this.collectionList.replaceChildren(
      ...this.collections.map((collection) => this.collectionButton(collection)),
    );
    this.collectionList.hidden = this.collections.length === 0;
    byId("library-locked").hidden = !this.locked;
  }

  private item(video: Video): HTMLElement {
    const selected = this.selection.includes(video.key);
    const button = h(
      "button",
      {
        type: "button",
        class: `library-item${selected ? " selected" : ""}${video.key === this.focus ? " focus" : ""}`,
        "data-video-key": video.key,
        "aria-pressed": String(selected),
        disabled: this.locked,
        title: `${video.title}${video.channel ? ` — ${video.channel}` : ""}\nCtrl-click (⌘-click) to talk about several videos`,
      },
      h("span", { class: "item-title" }, video.title),
      h(
        "span",
        { class: "item-meta" },
        h("span", {}, mmss(video.duration_s)),
        video.youtube_id
          ? h("span", { class: "badge youtube" }, "YouTube")
          : h("span", { class: "badge captions" }, "captions file"),
      ),
    );
    button.addEventListener("click", (event) => {
      if (!(event.ctrlKey || event.metaKey)) {
        this.select([video.key]);
      } else if (!selected) {
        this.select([...this.selection, video.key], video.key);
      } else if (this.selection.length > 1) {
        this.select(
          this.selection.filter((key) => key !== video.key),
          this.focus,
        );
      }
    });
    return button;
  }

  private collectionButton(collection: Collection): HTMLElement {
    const keys = collection.videos.filter((key) => this.byKey(key));
    const active =
      keys.length > 0 &&
      keys.length === this.selection.length &&
      keys.every((key) => this.selection.includes(key));
    const button = h(
      "button",
      {
        type: "button",
        class: `collection${active ? " selected" : ""}`,
        "data-collection": collection.name,
        "aria-pressed": String(active),
        disabled: this.locked || keys.length === 0,
        title: `Talk about the ${keys.length} videos of “${collection.name}”`,
      },
      h("span", { class: "collection-name" }, collection.name),
      h(
        "span",
        { class: "collection-count" },
        h("span", { class: "badge collection-badge" }, "collection"),
        `${keys.length} video${keys.length === 1 ? "" : "s"}`,
      ),
    );
    button.addEventListener("click", () => this.select(keys));
    return button;
  }
}
