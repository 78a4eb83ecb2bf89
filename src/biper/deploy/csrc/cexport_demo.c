/* Example for a biper C export: ./demo IN OUT [DUMP]
 * IN: N images, N*BIPER_INPUT_SIZE little-endian float32 (CHW, preprocessed);
 * OUT: N*BIPER_NUM_CLASSES little-endian float32 logits. Byte order is decoded explicitly, so
 * the same files work on big- and little-endian hosts. DUMP needs a -DBIPER_DUMP build. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

static unsigned char bytes[4 * BIPER_INPUT_SIZE];
static float image[BIPER_INPUT_SIZE];
static float logits[BIPER_NUM_CLASSES];

static float from_le(const unsigned char *b) {
    uint32_t u = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void to_le(float f, unsigned char *b) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    b[0] = (unsigned char)(u & 0xFFu);
    b[1] = (unsigned char)((u >> 8) & 0xFFu);
    b[2] = (unsigned char)((u >> 16) & 0xFFu);
    b[3] = (unsigned char)((u >> 24) & 0xFFu);
}

int main(int argc, char **argv) {
    FILE *in, *out;
    long n = 0;
    int i;
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s IN OUT%s\n", argv[0], argc == 4 ? " DUMP" : "");
        return 2;
    }
    in = fopen(argv[1], "rb");
    if (!in) {
        fprintf(stderr, "error: cannot open %s\n", argv[1]);
        return 2;
    }
    out = fopen(argv[2], "wb");
    if (!out) {
        fprintf(stderr, "error: cannot write %s\n", argv[2]);
        fclose(in);
        return 2;
    }
#ifdef BIPER_DUMP
    if (argc == 4 && !(biper_dump_file = fopen(argv[3], "wb"))) {
        fprintf(stderr, "error: cannot write %s\n", argv[3]);
        return 2;
    }
#else
    if (argc == 4) {
        fprintf(stderr, "error: DUMP needs a build with -DBIPER_DUMP\n");
        return 2;
    }
#endif
    for (;;) {
        size_t got = fread(bytes, 1, sizeof bytes, in);
        if (got == 0) break;
        if (got != sizeof bytes) {
            fprintf(stderr, "error: %s ends inside image %ld (%lu of %lu bytes)\n", argv[1], n,
                    (unsigned long)got, (unsigned long)sizeof bytes);
            return 2;
        }
        for (i = 0; i < BIPER_INPUT_SIZE; ++i) image[i] = from_le(bytes + 4 * i);
        biper_predict(image, logits);
        for (i = 0; i < BIPER_NUM_CLASSES; ++i) {
            unsigned char b[4];
            to_le(logits[i], b);
            if (fwrite(b, 1, 4, out) != 4) {
                fprintf(stderr, "error: cannot write %s\n", argv[2]);
                return 2;
            }
        }
        ++n;
    }
    fclose(in);
    if (fclose(out) != 0) {
        fprintf(stderr, "error: cannot write %s\n", argv[2]);
        return 2;
    }
#ifdef BIPER_DUMP
    if (biper_dump_file) fclose(biper_dump_file);
#endif
    fprintf(stderr, "%ld images\n", n);
    return 0;
}
