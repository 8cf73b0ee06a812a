// Expiration times as memcached reads them: 0 never expires, 1..2592000 (30
// days) are seconds from now, anything larger is an absolute Unix time. They
// are passed through unchanged; these helpers only check and build them.

export const MAX_RELATIVE_EXPTIME = 60 * 60 * 24 * 30;

/** True if memcached can carry `exptime` (a uint32). */
export function isValidExptime(exptime: number): boolean {
  return Number.isInteger(exptime) && exptime >= 0 && exptime <= 0xffffffff;
}

/**
 * The exptime for a time-to-live of `ttlSeconds` from `nowMs`: relative when
 * memcached would read it as relative, else converted to absolute Unix time
 * (a relative value over 30 days would be read as a date in 1970 and expire at once).
 */
export function exptimeForTtl(ttlSeconds: number, nowMs: number = Date.now()): number {
  if (!(ttlSeconds > 0)) throw new RangeError('ttl must be positive');
  const ttl = Math.ceil(ttlSeconds);
  return ttl <= MAX_RELATIVE_EXPTIME ? ttl : Math.floor(nowMs / 1000) + ttl;
}
