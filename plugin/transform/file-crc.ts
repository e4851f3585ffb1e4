/** The CRC-32 of a file, read in pieces (for files whose CRC was not computed while writing, and for verify). */
import { open } from 'node:fs/promises';
import { crc32 } from 'node:zlib';

export async function fileCrc32Of(path: string): Promise<{ size: number; crc32: number }> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
    let pos = 0;
    let crc = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.byteLength, pos);
      if (bytesRead === 0) break;
      crc = crc32(buf.subarray(0, bytesRead), crc);
      pos += bytesRead;
    }
    return { size: pos, crc32: crc >>> 0 };
  } finally {
    await fh.close();
  }
}
