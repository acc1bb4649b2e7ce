// The server's HTTP API (see the README's "page ↔ server contract"): types and fetch helpers.

export interface Video {
  key: string;
  title: string;
  youtube_id: string | null;
  channel: string | null;
  duration_s: number;
  chunks: number;
  ingested_at: string;
}

export interface Config {
  videos: Video[];
  persona: string;
  personas: string[];
}

export interface Collection {
  name: string;
  videos: string[];
}

export type JobStatus = "queued" | "running" | "done" | "failed";

export interface Job {
  id: string;
  input: string;
  key: string | null;
  status: JobStatus;
  stage: "fetch" | "embed" | "store" | null;
  done: number;
  total: number | null;
  error: string | null;
  video: Video | null;
}

export interface Chunk {
  ordinal: number;
  start_s: number;
  end_s: number;
  text: string;
}

/** A place in a video the bot cited (the `citation` server message, and saved messages). */
export interface Citation {
  video_id: string | null;
  video_key: string;
  title: string;
  seconds: number;
  timestamp: string;
  url: string | null;
  start_s: number;
  end_s: number;
}

export interface ConversationSummary {
  id: number | string;
  started_at: string;
  ended_at: string | null;
  video_keys: string[];
  persona: string;
  messages: number;
  preview: string;
}

export interface ConversationMessage {
  role: "user" | "assistant";
  content: string;
  interrupted: boolean;
  created_at: string;
  citations: Citation[];
}

export interface ConversationDetail extends Omit<ConversationSummary, "messages" | "preview"> {
  messages: ConversationMessage[];
}

/** An HTTP error, with the server's `detail` message when it sent one. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

const KEY_STORAGE = "backtalk-api-key";

/**
 * The API key `backtalk serve` asks for (`Authorization: Bearer …`), kept in this
 * browser's localStorage. `backtalk talk` needs none.
 */
export const auth = {
  get key(): string | null {
    return localStorage.getItem(KEY_STORAGE);
  },
  set(key: string): void {
    localStorage.setItem(KEY_STORAGE, key.trim());
  },
  clear(): void {
    localStorage.removeItem(KEY_STORAGE);
  },
  headers(): Record<string, string> {
    const key = this.key;
    return key ? { Authorization: `Bearer ${key}` } : {};
  },
  /** Called when the server answers 401: the key is missing, wrong or revoked. */
  onUnauthorized: (() => undefined) as (detail: string) => void,
};

async function request<T>(path: string, init?: RequestInit): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, {
      ...init,
      headers: { ...auth.headers(), ...(init?.headers as Record<string, string> | undefined) },
    });
  } catch {
    throw new ApiError("Could not reach the Backtalk server: is `backtalk talk` still running?", 0);
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`.trim();
    try {
      const body = await response.json();
      if (typeof body?.detail === "string") detail = body.detail;
    } catch {
      // Not JSON: keep the status line.
    }
    if (response.status === 401) auth.onUnauthorized(detail);
    throw new ApiError(detail, response.status);
  }
  return (await response.json()) as T;
}

export const api = {
  config: () => request<Config>("/api/config"),
  videos: () => request<{ videos: Video[] }>("/api/videos").then((r) => r.videos),
  collections: () =>
    request<{ collections: Collection[] }>("/api/collections").then((r) => r.collections),
  ingest: (input: string) =>
    request<{ job: Job }>("/api/videos", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ input }),
    }).then((r) => r.job),
  job: (id: string) =>
    request<{ job: Job }>(`/api/jobs/${encodeURIComponent(id)}`).then((r) => r.job),
  conversations: (videoKey: string) =>
    request<{ conversations: ConversationSummary[] }>(
      `/api/conversations?video=${encodeURIComponent(videoKey)}`,
    ).then((r) => r.conversations),
  conversation: (id: number | string) =>
    request<ConversationDetail>(`/api/conversations/${encodeURIComponent(String(id))}`),
};

const chunkCache = new Map<string, Promise<Chunk[]>>();

/** A video's transcript chunks, fetched once per video (a failed fetch is retried next time). */
export function chunksOf(videoKey: string): Promise<Chunk[]> {
  let chunks = chunkCache.get(videoKey);
  if (!chunks) {
    chunks = request<{ chunks: Chunk[] }>(
      `/api/videos/${encodeURIComponent(videoKey)}/chunks`,
    ).then((r) => r.chunks);
    chunks.catch(() => chunkCache.delete(videoKey));
    chunkCache.set(videoKey, chunks);
  }
  return chunks;
}
