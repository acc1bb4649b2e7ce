// The transcript tab: the video's chunks, one line each, with their start times.
//
// For caption files (no YouTube id) it is the video: citations scroll to and highlight
// their line. For YouTube videos its times seek the player.

import { chunksOf, type Chunk, type Video } from "./api";
import { byId, h, mmss, setMessage } from "./dom";

/** The chunk covering `seconds`: the last one starting at or before it. */
export function chunkAt<T extends { start_s: number }>(
  chunks: T[],
  seconds: number,
): T | undefined {
  let found: T | undefined;
  for (const chunk of chunks) {
    if (chunk.start_s <= seconds + 0.5) found = chunk;
    else break;
  }
  return found ?? chunks[0];
}

export class TranscriptView {
  private readonly list = byId<HTMLOListElement>("transcript");
  private readonly status = byId("transcript-status");
  private videoKey: string | null = null;
  private chunks: Chunk[] = [];
  private loaded: Promise<void> = Promise.resolve();

  /** `onTime(video, seconds)`: a line's time was pressed. */
  constructor(private readonly onTime: (video: Video, seconds: number) => void) {}

  /** Show `video`'s transcript (fetched once per video). */
  load(video: Video | null): Promise<void> {
    if (video?.key === this.videoKey) return this.loaded;
    this.videoKey = video?.key ?? null;
    this.chunks = [];
    this.list.replaceChildren();
    if (!video) {
      setMessage(this.status, "Choose a video to see its transcript.");
      this.loaded = Promise.resolve();
      return this.loaded;
    }
    setMessage(this.status, "Loading the transcript…");
    this.loaded = chunksOf(video.key).then(
      (chunks) => {
        if (this.videoKey !== video.key) return; // another video was chosen meanwhile
        this.chunks = chunks;
        setMessage(this.status, chunks.length ? "" : "This video has no transcript.");
        this.list.replaceChildren(...chunks.map((chunk) => this.line(video, chunk)));
      },
      (error: Error) => {
        if (this.videoKey === video.key) setMessage(this.status, error.message);
      },
    );
    return this.loaded;
  }

  /** Scroll `video`'s transcript to the line covering `seconds` and highlight it. */
  async highlight(video: Video, seconds: number): Promise<void> {
    await this.load(video);
    const chunk = chunkAt(this.chunks, seconds);
    if (!chunk) return;
    for (const line of this.list.children) line.classList.remove("highlight");
    const line = this.list.children[this.chunks.indexOf(chunk)] as HTMLElement;
    line.classList.add("highlight");
    line.scrollIntoView({ block: "center", behavior: "smooth" });
  }

  /** Mark the line being played (`seconds` of the shown video; null: nothing plays). */
  markPlaying(seconds: number | null): void {
    const chunk = seconds === null ? undefined : chunkAt(this.chunks, seconds);
    this.chunks.forEach((c, i) => this.list.children[i]?.classList.toggle("now", c === chunk));
  }

  private line(video: Video, chunk: Chunk): HTMLLIElement {
    const time = h(
      "button",
      { type: "button", class: "line-time", "aria-label": `Go to ${mmss(chunk.start_s)}` },
      mmss(chunk.start_s),
    );
    time.addEventListener("click", () => this.onTime(video, chunk.start_s));
    return h(
      "li",
      { "data-start-s": chunk.start_s, "data-end-s": chunk.end_s },
      time,
      h("span", { class: "line-text" }, chunk.text),
    );
  }
}
