// Just enough of PNG to read a browser screenshot back: 8-bit RGB or RGBA,
// not interlaced (what headless Chromium writes), the five scanline filters
// undone. The e2e report test looks at the pixels a person would see.
import { inflateSync } from 'node:zlib';

export interface Image {
  width: number;
  height: number;
  /** RGBA, 4 bytes a pixel, row by row. */
  rgba: Buffer;
}

export function decodePng(buf: Buffer): Image {
  if (!buf.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) throw new Error('not a PNG');
  let off = 8;
  let width = 0, height = 0, depth = 0, colour = 0, interlace = 0;
  const idat: Buffer[] = [];
  while (off < buf.length) {
    const len = buf.readUInt32BE(off);
    const type = buf.toString('latin1', off + 4, off + 8);
    const data = buf.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0); height = data.readUInt32BE(4); depth = data[8]; colour = data[9]; interlace = data[12];
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    off += 12 + len;
  }
  if (depth !== 8 || (colour !== 2 && colour !== 6) || interlace !== 0) throw new Error(`unsupported PNG (depth ${depth}, colour type ${colour}, interlace ${interlace})`);
  const bpp = colour === 6 ? 4 : 3;
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * bpp;
  const out = Buffer.alloc(width * height * 4);
  const prev = Buffer.alloc(stride);
  const cur = Buffer.alloc(stride);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)];
    raw.copy(cur, 0, y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let i = 0; i < stride; i++) {
      const a = i >= bpp ? cur[i - bpp] : 0;
      const b = prev[i];
      const c = i >= bpp ? prev[i - bpp] : 0;
      let v = cur[i];
      if (f === 1) v += a;
      else if (f === 2) v += b;
      else if (f === 3) v += (a + b) >> 1;
      else if (f === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      cur[i] = v & 0xff;
    }
    for (let x = 0; x < width; x++) {
      out[(y * width + x) * 4] = cur[x * bpp];
      out[(y * width + x) * 4 + 1] = cur[x * bpp + 1];
      out[(y * width + x) * 4 + 2] = cur[x * bpp + 2];
      out[(y * width + x) * 4 + 3] = bpp === 4 ? cur[x * bpp + 3] : 255;
    }
    cur.copy(prev);
  }
  return { width, height, rgba: out };
}

/**
 * The runs of the given colours along each row, as colour names, keeping only
 * runs `minWidth`..`maxWidth` pixels wide: the grid's squares, not the wider
 * badges or the page background. One string per row that has any, e.g.
 * "pass pass todo pass".
 */
export function colourRuns(img: Image, colours: Record<string, string>, minWidth: number, maxWidth: number): string[] {
  const rgb = Object.entries(colours).map(([name, hex]) => [name, parseInt(hex.slice(1, 3), 16), parseInt(hex.slice(3, 5), 16), parseInt(hex.slice(5, 7), 16)] as const);
  const rows: string[] = [];
  for (let y = 0; y < img.height; y++) {
    const names: string[] = [];
    let run: string | undefined;
    let len = 0;
    const close = () => {
      if (run && len >= minWidth && len <= maxWidth) names.push(run);
      run = undefined;
      len = 0;
    };
    for (let x = 0; x < img.width; x++) {
      const o = (y * img.width + x) * 4;
      const hit = rgb.find(([, r, g, b]) => img.rgba[o] === r && img.rgba[o + 1] === g && img.rgba[o + 2] === b)?.[0];
      if (hit === run && hit) len++;
      else {
        close();
        if (hit) { run = hit; len = 1; }
      }
    }
    close();
    if (names.length) rows.push(names.join(' '));
  }
  return rows;
}
