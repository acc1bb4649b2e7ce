// The link box: add a YouTube video to the library, with the ingest job's progress.

import { api, type Job, type Video } from "./api";
import { byId, setMessage, show } from "./dom";

/** How often the job is polled, ms (~4×/s). */
const POLL_MS = 250;
/** How long "Added …" stays up after a job is done, ms. */
const DONE_VISIBLE_MS = 6000;

/** What the job is doing, in words (the stages of the CLI's progress bar). */
function describe(job: Job): string {
  switch (job.status) {
    case "queued":
      return "Waiting for the previous video to finish…";
    case "done":
      return `Added “${job.video?.title ?? job.input}”.`;
    case "failed":
      return "Could not add the video.";
  }
  switch (job.stage) {
    case "fetch":
      return "Fetching the transcript…";
    case "embed":
      return job.total ? `Embedding ${job.done}/${job.total} chunks…` : "Embedding…";
    case "store":
      return "Saving…";
    default:
      return "Starting…";
  }
}

export class LinkBox {
  private readonly form = byId<HTMLFormElement>("link-form");
  private readonly input = byId<HTMLInputElement>("link-input");
  private readonly submit = byId<HTMLButtonElement>("link-submit");
  private readonly status = byId("ingest-status");
  private readonly label = byId("ingest-label");
  private readonly progress = byId<HTMLProgressElement>("ingest-progress");
  private readonly error = byId("ingest-error");
  private hideTimer: ReturnType<typeof setTimeout> | undefined;

  /** `onAdded(video)`: a video was ingested (or was already in the library). */
  constructor(private readonly onAdded: (video: Video) => Promise<void>) {
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.add(this.input.value.trim());
    });
  }

  private async add(input: string): Promise<void> {
    setMessage(this.error, "");
    if (!input) {
      setMessage(this.error, "Paste a YouTube link (or an 11-character video id) first.");
      this.input.focus();
      return;
    }
    this.submit.disabled = true;
    try {
      let job = await api.ingest(input);
      this.render(job);
      while (job.status === "queued" || job.status === "running") {
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        job = await api.job(job.id);
        this.render(job);
      }
      if (job.status === "failed") {
        setMessage(this.error, job.error ?? "The video could not be added.");
        show(this.status, false);
        return;
      }
      this.input.value = "";
      if (job.video) await this.onAdded(job.video);
    } catch (error) {
      setMessage(this.error, (error as Error).message);
      show(this.status, false);
    } finally {
      this.submit.disabled = false;
    }
  }

  private render(job: Job): void {
    clearTimeout(this.hideTimer);
    this.status.dataset.status = job.status;
    this.status.dataset.stage = job.stage ?? "";
    this.label.textContent = describe(job);
    if (job.status === "done") {
      this.progress.max = 1;
      this.progress.value = 1;
      this.hideTimer = setTimeout(() => show(this.status, false), DONE_VISIBLE_MS);
    } else if (job.stage === "embed" && job.total) {
      this.progress.max = job.total;
      this.progress.value = job.done;
    } else {
      this.progress.removeAttribute("value"); // indeterminate
    }
    show(this.status, true);
  }
}
