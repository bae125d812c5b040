// Text from files and users shown on a terminal: a control character (ESC
// sequences, carriage returns) or a bidi override (U+202E reverses the rest of
// the line) in a lab value or a file name would make a message read other
// than it is. Every message hwlab prints about input goes through here.

// C0 and C1 controls but newline and tab, DEL, and the invisible format
// characters that reorder or hide text (bidi embeddings, overrides, isolates,
// marks, zero-width characters, BOM).
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]/g;

const hex = (c: string) => `\\u{${c.codePointAt(0)!.toString(16).padStart(4, '0')}}`;

/** `s` with every unsafe character as `\u{202e}`; newlines and tabs stay (messages have several lines). */
export function escapeForTerminal(s: string): string {
  return s.replace(UNSAFE, hex);
}

/**
 * A value quoted in a message: JSON quotes, every non-ASCII character escaped
 * too (so `shm0` and a look-alike with a Cyrillic letter differ), and cut at
 * `max` characters with the length said.
 */
export function quoteForTerminal(s: string, max = 80): string {
  const cut = s.length > max ? s.slice(0, max) : s;
  const q = JSON.stringify(cut).replace(/[^\x20-\x7e]/gu, hex);
  return s.length > max ? `${q.slice(0, -1)}..." (${s.length} characters)` : q;
}
