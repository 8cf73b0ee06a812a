// The one error type the client rejects with. The proxy counts failures by
// `code` and reads a failed lookup as a miss.

export type MemcacheErrorCode =
  | 'timeout'  // no answer within the operation's deadline
  | 'closed'   // the connection closed (or the client was closed) before the answer
  | 'down'     // the server is marked down; failing fast until a probe finds it back
  | 'server'   // memcached answered with an error status (see `status`)
  | 'protocol' // the server sent something this client cannot parse or match
  | 'invalid'; // bad argument (exptime, flags), detected before sending

export class MemcacheError extends Error {
  readonly code: MemcacheErrorCode;
  /** memcached status code, for code 'server'. */
  readonly status: number | undefined;
  readonly server: string | undefined;
  /** The socket error's code (ECONNREFUSED, ENOTFOUND...), for code 'closed'. */
  readonly errno: string | undefined;

  constructor(code: MemcacheErrorCode, message: string, server?: string, status?: number, errno?: string) {
    super(server === undefined ? message : `${server}: ${message}`);
    this.name = 'MemcacheError';
    this.code = code;
    this.server = server;
    this.status = status;
    this.errno = errno;
  }
}
