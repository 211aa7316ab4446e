/*
 * tern's test workload: holds N MiB of written, incompressible memory,
 * dirties R MiB of it per second (one byte per page, cycling through the
 * pages), and writes a tick counter to /count ten times a second so that
 * continuity can be checked after a migration (written to /count.new and
 * renamed, so a reader never sees a half-written value).
 *
 * It keeps a checksum of every page beside the memory. On SIGUSR1 it reads
 * all its memory back and writes to /verify "ok PAGES" when every page
 * matches its checksum, else "bad WRONG of PAGES": a page lost on the way
 * (zero-filled by a post-copy gone wrong, say) shows there.
 *
 *   memhog MIB [DIRTY_MIB_PER_S]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
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

static volatile sig_atomic_t verify_asked;

static void ask_verify(int sig) {
    (void)sig;
    verify_asked = 1;
}

static uint64_t page_sum(const unsigned char *page) {
    uint64_t h = 1469598103934665603ULL, w;
    for (size_t i = 0; i < PAGE; i += 8) {
        memcpy(&w, page + i, 8);
        h = (h ^ w) * 1099511628211ULL;
    }
    return h;
}

static void verify(const unsigned char *buf, const uint64_t *sums, size_t pages) {
    size_t bad = 0;
    for (size_t p = 0; p < pages; p++)
        bad += page_sum(buf + p * PAGE) != sums[p];
    FILE *f = fopen("/verify.new", "w");
    if (!f)
        return;
    if (bad)
        fprintf(f, "bad %zu of %zu\n", bad, pages);
    else
        fprintf(f, "ok %zu\n", pages);
    fclose(f);
    rename("/verify.new", "/verify");
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
    uint64_t *sums = malloc((pages ? pages : 1) * sizeof *sums);
    if (!sums) {
        perror("malloc");
        return 1;
    }
    for (size_t p = 0; p < pages; p++)
        sums[p] = page_sum(buf + p * PAGE);
    signal(SIGUSR1, ask_verify);
    size_t next = 0;
    double budget = 0.0;
    unsigned long long ticks = 0;
    for (;;) {
        struct timespec d = {0, 100 * 1000 * 1000};
        nanosleep(&d, NULL);
        budget += rate * (1 << 20) / PAGE / 10.0;
        while (budget >= 1.0 && pages) {
            size_t p = next % pages;
            buf[p * PAGE] ^= (unsigned char)xorshift(&seed);
            sums[p] = page_sum(buf + p * PAGE);
            next++;
            budget -= 1.0;
        }
        if (verify_asked) {
            verify_asked = 0;
            verify(buf, sums, pages);
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
