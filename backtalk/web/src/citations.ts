// Citation chips ("03:34 · Title") and the transcript passage each one can open.
// The same elements serve live answers and saved conversations.

import { chunksOf, type Chunk, type Citation } from "./api";
import { h, mmss } from "./dom";
import { chunkAt } from "./transcript";

/** The LLM's citation tags (`<cite v="ID" t="214"/>`), which are never shown or spoken. */
const CITE_TAG = /[ \t]*<cite\b[^<>]{0,200}?\/?>/g;

/** `text` without citation tags (saved answers keep them; the chips stand for them). */
export function withoutCitationTags(text: string): string {
  return text.replace(CITE_TAG, "");
}

/** Seconds within which a chunk's bounds count as the citation's start_s / end_s. */
const BOUNDS_TOLERANCE_S = 0.5;

let passageIds = 0;

/** The chunk a citation falls in: the one with its bounds, else the one covering its second. */
function citedChunk(chunks: Chunk[], citation: Citation): Chunk | undefined {
  const exact = chunks.find(
    (c) =>
      Math.abs(c.start_s - citation.start_s) < BOUNDS_TOLERANCE_S &&
      Math.abs(c.end_s - citation.end_s) < BOUNDS_TOLERANCE_S,
  );
  return (
    exact ??
    chunks.find((c) => c.start_s <= citation.seconds && citation.seconds < c.end_s) ??
    chunkAt(chunks, citation.seconds)
  );
}

/** A chip that calls `open(citation)`, and a toggle that shows the cited passage. */
export function citationItem(citation: Citation, open: (citation: Citation) => void): HTMLElement {
  const time = citation.timestamp || mmss(citation.seconds);
  const chip = h(
    "button",
    {
      type: "button",
      class: "citation-chip",
      "data-seconds": citation.seconds,
      "data-video-key": citation.video_key,
      title: `Go to ${time} in “${citation.title}”`,
    },
    h("span", { class: "chip-time" }, time),
    " · ",
    h("span", { class: "chip-title" }, citation.title),
  );
  chip.addEventListener("click", () => open(citation));

  const id = `passage-${++passageIds}`;
  const passage = h("blockquote", { class: "passage", id, hidden: true });
  const toggle = h(
    "button",
    {
      type: "button",
      class: "passage-toggle",
      "aria-expanded": "false",
      "aria-controls": id,
      "aria-label": `Show the passage at ${time}`,
      title: "Show the passage",
    },
    "Passage",
  );
  const item = h("div", { class: "citation" }, chip, toggle, passage);

  let filled = false;
  toggle.addEventListener("click", async () => {
    const opening = passage.hidden;
    passage.hidden = !opening;
    item.classList.toggle("open", opening);
    toggle.setAttribute("aria-expanded", String(opening));
    toggle.setAttribute("aria-label", `${opening ? "Hide" : "Show"} the passage at ${time}`);
    if (!opening || filled) return;
    passage.textContent = "Loading the passage…";
    try {
      const chunk = citedChunk(await chunksOf(citation.video_key), citation);
      passage.replaceChildren(
        h(
          "cite",
          {},
          chunk
            ? `${mmss(chunk.start_s)}–${mmss(chunk.end_s)} · ${citation.title}`
            : citation.title,
        ),
        h("p", {}, chunk?.text ?? "This passage is no longer in the library."),
      );
      filled = true;
    } catch (error) {
      passage.textContent = (error as Error).message;
    }
  });
  return item;
}
