// Key rules. memcached rejects keys over 250 bytes, and its text protocol
// (which other tools use on the same data) cannot carry spaces, control bytes
// or non-ASCII. Such keys are replaced by a fixed-length hash instead of
// failing, so one bad key cannot cost the other operations in its batch.

export const MAX_KEY_LENGTH = 250;
const HASH_MARK = 0x23; // '#'
// prefix + '#' + base64url(sha256) must itself fit in MAX_KEY_LENGTH.
export const MAX_PREFIX_LENGTH = MAX_KEY_LENGTH - 1 - 43;

/** True if every char is printable ASCII (0x21..0x7e): no space, control, DEL or non-ASCII. */
function printableAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

/** Throws unless `prefix` can start every key this client sends. */
export function validatePrefix(prefix: string): void {
  if (prefix.length > MAX_PREFIX_LENGTH) throw new RangeError(`key prefix longer than ${MAX_PREFIX_LENGTH} chars`);
  if (!printableAscii(prefix)) throw new RangeError('key prefix must be printable ASCII without spaces');
}

/**
 * The key actually stored in memcached for `key` under namespace `prefix`
 * (assumed valid, see validatePrefix): `prefix + key` when that is a valid
 * memcached key, else `prefix + '#' + base64url(sha256(key))`. Keys that
 * themselves start with '#' are hashed too, so a plain key can never collide
 * with a hashed one.
 */
export function memcacheKey(prefix: string, key: string): string {
  if (
    key.length > 0 &&
    prefix.length + key.length <= MAX_KEY_LENGTH &&
    key.charCodeAt(0) !== HASH_MARK &&
    printableAscii(key)
  ) {
    return prefix + key;
  }
  // node:crypto is loaded with the first key that needs hashing.
  return prefix + '#' + process.getBuiltinModule('node:crypto').createHash('sha256').update(key, 'utf8').digest('base64url');
}
