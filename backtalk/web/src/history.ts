// The history tab: past conversations about the video on the stage, and one opened.

import { api, type Citation, type ConversationMessage } from "./api";
import { citationItem, withoutCitationTags } from "./citations";
import { byId, h, setMessage, when } from "./dom";

export class HistoryView {
  private readonly list = byId("history");
  private readonly status = byId("history-status");
  private readonly view = byId("history-view");
  private readonly title = byId("history-title");
  private readonly messages = byId("history-messages");
  private videoKey: string | null = null;

  /** `open(citation)`: a citation chip was pressed. */
  constructor(private readonly open: (citation: Citation) => void) {
    byId("history-back").addEventListener("click", () => this.close());
  }

  /** List the conversations about `videoKey` (newest first); `recent`: the one just had. */
  async refresh(videoKey: string | null, recent: number | null = null): Promise<void> {
    if (videoKey !== this.videoKey) this.close();
    this.videoKey = videoKey;
    if (!videoKey) {
      this.list.replaceChildren();
      setMessage(this.status, "Choose a video to see its conversations.");
      return;
    }
    try {
      const conversations = await api.conversations(videoKey);
      if (videoKey !== this.videoKey) return;
      setMessage(this.status, conversations.length ? "" : "No conversations about this video yet.");
      this.list.replaceChildren(
        ...conversations.map((c) => {
          const item = h(
            "button",
            {
              type: "button",
              class: `history-item${c.id === recent ? " recent" : ""}`,
              "data-conversation-id": c.id,
            },
            h(
              "span",
              { class: "history-meta" },
              h("time", { datetime: c.started_at }, when(c.started_at)),
              h("span", {}, `${c.messages} message${c.messages === 1 ? "" : "s"}`),
              h("span", { class: "badge" }, c.persona),
            ),
            h("span", { class: "history-preview" }, c.preview || "(nothing said)"),
          );
          item.addEventListener("click", () => void this.show(c.id));
          return h("li", {}, item);
        }),
      );
    } catch (error) {
      setMessage(this.status, (error as Error).message);
    }
  }

  private async show(id: number | string): Promise<void> {
    this.title.textContent = "Loading…";
    this.messages.replaceChildren();
    this.view.hidden = false;
    this.list.hidden = true;
    this.status.hidden = true;
    try {
      const conversation = await api.conversation(id);
      this.title.replaceChildren(
        h("time", { datetime: conversation.started_at }, when(conversation.started_at)),
        ` · ${conversation.persona}`,
      );
      this.messages.replaceChildren(...conversation.messages.map((m) => this.message(m)));
    } catch (error) {
      this.title.textContent = (error as Error).message;
    }
  }

  private message(message: ConversationMessage): HTMLElement {
    const bot = message.role === "assistant";
    const who = h("div", { class: "turn-who" }, bot ? "Backtalk" : "You");
    if (message.interrupted) who.append(h("span", { class: "turn-note" }, "interrupted"));
    const citations = message.citations ?? [];
    return h(
      "article",
      {
        class: `history-message ${bot ? "bot" : "user"}${message.interrupted ? " interrupted" : ""}`,
      },
      who,
      h("p", { class: "turn-text" }, withoutCitationTags(message.content)),
      citations.length > 0 &&
        h("div", { class: "citations" }, ...citations.map((c) => citationItem(c, this.open))),
    );
  }

  private close(): void {
    this.view.hidden = true;
    this.list.hidden = false;
    this.status.hidden = this.status.textContent === "";
  }
}
