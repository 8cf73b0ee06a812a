// The seam between affinity logic and where bindings live. A store maps a
// session key to the name of the backend that owns the session.

export interface AffinityStore {
  /** Said in the start-up log line. */
  readonly description: string;
  /** The backend a key is bound to, or null. Rejects when the store cannot answer. */
  get(key: string): Promise<string | null>;
  /** Binds key to backend for ttl seconds; sliding bindings are refreshed by use. */
  set(key: string, backend: string, ttl: number, sliding: boolean): Promise<void>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}
