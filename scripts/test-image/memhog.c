/*
 * tern's test workload: holds N MiB of written, incompressible memory,
 * dirties R MiB of it per second (one byte per page, cycling through the
 * pages), and writes a tick counter to /count ten times a second so that
 * continuity can be checked after a migration (written to /count.new and
 * renamed, so a reader never sees a half-written value).
 *
 *   memhog MIB [DIRTY_MIB_PER_S]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    double rate = argc > 2 ? strtod(argv[2], NULL) : 0.0;
    size_t len = mib << 20, pages = len / PAGE;
    unsigned char *buf = malloc(len ? len : PAGE);
    if (!buf) {
        perror("malloc");
        return 1;
    }
    uint64_t seed = 88172645463325252ULL ^ (uint64_t)getpid();
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t v = xorshift(&seed);
        memcpy(buf + i, &v, 8);
    }
    size_t next = 0;
    double budget = 0.0;
    unsigned long long ticks = 0;
    for (;;) {
        struct timespec d = {0, 100 * 1000 * 1000};
        nanosleep(&d, NULL);
        budget += rate * (1 << 20) / PAGE / 10.0;
        while (budget >= 1.0 && pages) {
            buf[(next % pages) * PAGE] ^= (unsigned char)xorshift(&seed);
            next++;
            budget -= 1.0;
        }
        ticks++;
        FILE *f = fopen("/count.new", "w");
        if (f) {
            fprintf(f, "%llu\n", ticks);
            fclose(f);
            rename("/count.new", "/count");
        }
    }
}
