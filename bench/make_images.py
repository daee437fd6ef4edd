#!/usr/bin/env python3
"""Writes the two test images of bench/load.sh, with the standard library only.

    make_images.py OUTDIR

* OUTDIR/small.gif: 32x32, 256-colour palette, noisy pixels, about 2 KB. The LZW
  stream uses literal codes only (a clear code every 250 codes keeps them 9 bits wide),
  which every GIF decoder accepts.
* OUTDIR/medium.png: 116x116 RGB, 8-bit, noisy pixels (zlib cannot shrink noise),
  about 40 KB.

Pixels come from a fixed seed, so every run writes the same bytes.
"""

import os
import random
import struct
import sys
import zlib


def gif(width, height, rng):
    palette = bytes(rng.randrange(256) for _ in range(256 * 3))
    pixels = [rng.randrange(256) for _ in range(width * height)]

    min_code_size = 8
    clear, eoi = 256, 257
    codes = [clear]
    for i, p in enumerate(pixels):
        if i and i % 250 == 0:
            codes.append(clear)
        codes.append(p)
    codes.append(eoi)

    # Pack the 9-bit codes LSB first.
    acc, nbits, packed = 0, 0, bytearray()
    for code in codes:
        acc |= code << nbits
        nbits += 9
        while nbits >= 8:
            packed.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits:
        packed.append(acc & 0xFF)

    out = bytearray(b"GIF89a")
    # Logical screen: global colour table present, 8 bits per colour, 256 entries.
    out += struct.pack("<HHBBB", width, height, 0xF7, 0, 0)
    out += palette
    out += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)  # image descriptor
    out.append(min_code_size)
    for i in range(0, len(packed), 255):
        block = packed[i : i + 255]
        out.append(len(block))
        out += block
    out += b"\x00\x3b"  # block terminator, trailer
    return bytes(out)


def png(width, height, rng):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = bytearray()
    for _ in range(height):
        raw.append(0)  # filter: none
        raw += bytes(rng.randrange(256) for _ in range(width * 3))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(raw), 9))
        + chunk(b"IEND", b"")
    )


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_images.py OUTDIR")
    outdir = sys.argv[1]
    rng = random.Random(20240601)
    for name, data in (("small.gif", gif(32, 32, rng)), ("medium.png", png(116, 116, rng))):
        path = os.path.join(outdir, name)
        with open(path, "wb") as f:
            f.write(data)
        print(f"{name} {len(data)}")


if __name__ == "__main__":
    main()
