/* pgzip.c: the parallel gzip pipeline behind pgzip.h.
 *
 *   pgzip_write() --copy--> Block from a bounded pool --+--> work queue --> N compressors --> ready ring --+
 *                                                       +--> hash queue --> hasher (SHA-256 of the input)  |
 *                            writer (gzip header, blocks in order, trailer, SHA-256 of the output) <-------+
 *
 * A block holds its input and its compressed output. It is handed to the hasher and the compressors at once
 * and goes back to the pool when both the hasher and the writer are done with it (refs). The pool has a
 * fixed number of slots, allocated on first use, so memory is bounded and nothing is allocated per block
 * once the pool is warm. Block boundaries depend only on input offsets and every block is compressed
 * independently (no shared history), and a block's bytes depend on its input alone (not on the worker that
 * compressed it: see compress_isal), so the output is the same for any number of threads, any write pattern
 * and any timing: the same tar gives the same blob digest. One mutex guards all queues: with 1 MiB blocks it
 * is taken a few thousand times a second at most. */
#include <stdarg.h>
#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <zlib.h>

#if HAVE_ISAL
#include <isa-l/crc.h>
#include <isa-l/igzip_lib.h>
#endif

#include "common/digest.h"
#include "common/sysinfo.h"
#include "snapshot/compress.h"
#include "snapshot/pgzip.h"

#define PGZIP_LEVEL_DEFAULT 1
#define GZIP_HEADER_SIZE    10
#define GZIP_TRAILER_SIZE   8
#define STORED_MAX          65535u
/* Bytes after each block's input, zeroed once: room for an engine's wide loads near the end of the input
 * (they never change the output). */
#define INPUT_PAD 64
/* isal_deflate()/deflate() calls per block before we call it a bug rather than a full output buffer. */
#define COMPRESS_CALLS_MAX 64

typedef struct PGzip PGzip;

typedef struct Block {
        struct Block *next_work; /* free list or work queue */
        struct Block *next_hash; /* hash queue */
        uint64_t seq;
        uint8_t *in;
        size_t in_len;
        uint8_t *out;
        size_t out_cap;
        size_t out_len;
        uint32_t crc;
        bool last;
        unsigned refs; /* the hasher and the writer */
} Block;

typedef struct Worker {
        PGzip *z;
        pthread_t thread;
#if HAVE_ISAL
        struct isal_zstream zs;
        uint8_t *level_buf;
        uint32_t level_buf_size;
#endif
        z_stream zlib;
        bool zlib_initialized;
} Worker;

typedef struct BlockQueue {
        Block *head;
        Block *tail;
} BlockQueue;

struct PGzip {
        snap_output_fn output;
        void *userdata;
        int level;
        size_t block_size;
        unsigned n_workers;

        pthread_mutex_t lock;
        pthread_cond_t cond_free;  /* producer: a block came back to the pool */
        pthread_cond_t cond_work;  /* compressors: work queued */
        pthread_cond_t cond_hash;  /* hasher: block queued */
        pthread_cond_t cond_ready; /* writer: the next block in order is compressed */
        pthread_cond_t cond_end;   /* pgzip_finish(): writer or hasher done */

        /* The pool: every block ever allocated is in all[], at most n_blocks. */
        Block **all;
        size_t n_blocks;
        size_t n_allocated;
        Block *free_list;
        BlockQueue work;
        Block *hash_head, *hash_tail;
        Block **ready; /* indexed by seq % n_blocks */

        /* Producer side, only touched by the caller's thread. */
        Block *current;
        uint64_t next_seq;
        bool finished;

        /* Writer side. */
        uint64_t write_seq;
        uint32_t crc;
        uint64_t size_in;
        uint64_t size_out;
        EVP_MD_CTX *sha_out;
        EVP_MD_CTX *sha_in; /* hasher */

        bool stopping;
        bool writer_done;
        bool hasher_done;
        NbError error; /* the first failure; error.code == 0 while healthy */

        Worker *workers;
        unsigned n_workers_started;
        pthread_t writer, hasher;
        bool writer_started, hasher_started;
        bool lock_initialized;
};

const char *pgzip_engine(void)
{
        return HAVE_ISAL ? "isa-l" : "zlib";
}

static void broadcast_all_locked(PGzip *z)
{
        pthread_cond_broadcast(&z->cond_free);
        pthread_cond_broadcast(&z->cond_work);
        pthread_cond_broadcast(&z->cond_hash);
        pthread_cond_broadcast(&z->cond_ready);
        pthread_cond_broadcast(&z->cond_end);
}

/* Records the first failure and wakes everyone: every wait also waits for an error. */
_printf_(3, 4) static int fail_locked(PGzip *z, int code, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        if (snap_error_record(&z->error, code, fmt, ap))
                broadcast_all_locked(z);
        va_end(ap);
        return z->error.code;
}

static bool halted_locked(PGzip *z)
{
        return z->stopping || z->error.code != 0;
}

static int error_copy(PGzip *z, NbError *e)
{
        return snap_error_copy(&z->error, "gzip", e);
}

static void block_unref_locked(PGzip *z, Block *b)
{
        assert(b->refs > 0);
        if (--b->refs > 0)
                return;
        b->next_work = z->free_list;
        z->free_list = b;
        pthread_cond_signal(&z->cond_free);
}

static Block *block_free(Block *b)
{
        if (b) {
                free(b->in);
                free(b->out);
                free(b);
        }
        return NULL;
}

/* Room for the compressed form of one block: deflate never needs much more than stored blocks (5 bytes per
 * 64 KiB) plus a dynamic Huffman header; the compressors grow the buffer should an engine need more. */
static size_t out_bound(size_t in)
{
        return in + in / 64 + 5 * (in / STORED_MAX + 2) + 1024;
}

static Block *block_new(size_t block_size)
{
        Block *b = calloc(1, sizeof(Block));
        if (!b)
                return NULL;
        b->in = malloc(block_size + INPUT_PAD);
        b->out_cap = out_bound(block_size);
        b->out = malloc(b->out_cap);
        if (!b->in || !b->out)
                return block_free(b);
        memset(b->in + block_size, 0, INPUT_PAD);
        return b;
}

/* ---- compressors ---- */

static int block_grow_out(Block *b)
{
        size_t cap = b->out_cap * 2;
        uint8_t *p = realloc(b->out, cap);
        if (!p)
                return -ENOMEM;
        b->out = p;
        b->out_cap = cap;
        return 0;
}

/* Level 0: stored blocks, written here so that every engine produces the same bytes. */
static int compress_stored(Block *b)
{
        size_t need = b->in_len + 5 * (b->in_len / STORED_MAX + 1), off = 0, o = 0;
        while (b->out_cap < need)
                if (block_grow_out(b) < 0)
                        return -ENOMEM;
        do {
                size_t n = b->in_len - off < STORED_MAX ? b->in_len - off : STORED_MAX;
                bool final = b->last && off + n == b->in_len;
                b->out[o++] = final ? 1 : 0;
                b->out[o++] = n & 0xff;
                b->out[o++] = n >> 8;
                b->out[o++] = ~n & 0xff;
                b->out[o++] = (~n >> 8) & 0xff;
                memcpy(b->out + o, b->in + off, n);
                o += n;
                off += n;
        } while (off < b->in_len);
        /* A non-final block must end on a byte boundary: stored blocks do. An empty non-final block never
         * happens (blocks are queued only when full or last), but the loop above writes one anyway. */
        b->out_len = o;
        return 0;
}

#if HAVE_ISAL
static uint32_t isal_level_of(int level)
{
        return level <= 3 ? 1 : level <= 6 ? 2 : 3;
}

static uint32_t isal_level_buf_size(uint32_t isal_level)
{
        switch (isal_level) {
        case 1:
                return ISAL_DEF_LVL1_DEFAULT;
        case 2:
                return ISAL_DEF_LVL2_DEFAULT;
        default:
                return ISAL_DEF_LVL3_DEFAULT;
        }
}

/* The first bytes of a block, given to isal_deflate() alone with SYNC_FLUSH: see compress_isal(). ISA-L 2.30
 * takes 4 to 17 bytes there (more than its finish pass's 3 last bytes, at most its body pass's 16 bytes of
 * input slack); 8 is in the middle. */
#define ISAL_PRIMER 8

/* Raw deflate with FULL_FLUSH: no history from other blocks, output ends byte-aligned (an empty stored
 * block), and the last block carries BFINAL.
 *
 * Determinism: ISA-L 2.30's level 1 and 2 body (isal_deflate_icf_body_hash_hist_{01,02,04}, in
 * igzip_icf_body_h1_gr_bt.asm) starts a stream that has no history yet (.write_first_byte) by hashing the
 * third position from rcx, which still holds the isal_zstream pointer, instead of from the data, and stores
 * that position in the hash slot so chosen. When the slot is one the block uses, a match is lost or found:
 * other valid bytes, depending on bits 16-47 of &w->zs, i.e. on which worker compressed the block (timing)
 * and on where the heap is (ASLR). No race, no stale state and no uninitialised memory is involved, so
 * valgrind, TSan and zeroing every buffer could not see it. The way around it: the first ISAL_PRIMER bytes
 * go in a call of their own with SYNC_FLUSH, short enough for the body pass to leave them to the finish
 * pass, which starts the history correctly; the rest of the block then enters the body with history, past
 * the faulty code. The cost is a small deflate block and an empty stored block per block: on 200 MiB of
 * libraries, 22 bytes less per 1 MiB block at level 1, 8 more per 32 KiB block, and no measurable time.
 * Nothing else carries over between blocks: whatever the stream and the level buffer held before,
 * isal_deflate_init() and ISA-L's hash table reset give the same output, so they are not zeroed per block.
 * test-pgzip builds blocks that are sensitive to the stream's address. */
static int compress_isal(Worker *w, Block *b, int *ret_engine_error)
{
        struct isal_zstream *zs = &w->zs;
        size_t primer = b->in_len > ISAL_PRIMER ? ISAL_PRIMER : 0;

        isal_deflate_init(zs);
        zs->level = isal_level_of(w->z->level);
        zs->level_buf = w->level_buf;
        zs->level_buf_size = w->level_buf_size;
        zs->gzip_flag = IGZIP_DEFLATE;
        zs->next_in = b->in;
        zs->next_out = b->out;
        zs->avail_out = (uint32_t)b->out_cap;
        if (primer > 0) {
                zs->avail_in = (uint32_t)primer;
                zs->flush = SYNC_FLUSH;
                zs->end_of_stream = 0;
        } else {
                zs->avail_in = (uint32_t)b->in_len;
                zs->flush = FULL_FLUSH;
                zs->end_of_stream = b->last;
        }

        for (unsigned i = 0; i < COMPRESS_CALLS_MAX; i++) {
                int r = isal_deflate(zs);
                if (r != COMP_OK) {
                        *ret_engine_error = r;
                        return -EIO;
                }
                size_t used = (size_t)(zs->next_out - b->out);
                bool flushed = zs->avail_in == 0 && zs->internal_state.state == ZSTATE_NEW_HDR;
                if (zs->flush == SYNC_FLUSH && flushed) {
                        /* The primer is out and started the history: now the rest of the block. */
                        assert(zs->internal_state.has_hist != IGZIP_NO_HIST);
                        zs->avail_in = (uint32_t)(b->in_len - primer);
                        zs->flush = FULL_FLUSH;
                        zs->end_of_stream = b->last;
                        continue;
                }
                bool done = b->last ? zs->internal_state.state == ZSTATE_END : flushed;
                if (done) {
                        b->out_len = used;
                        return 0;
                }
                if (zs->avail_out == 0) {
                        if (block_grow_out(b) < 0)
                                return -ENOMEM;
                        zs->next_out = b->out + used;
                        zs->avail_out = (uint32_t)(b->out_cap - used);
                }
        }
        *ret_engine_error = 0;
        return -EIO;
}
#endif

_unused_ static int compress_zlib(Worker *w, Block *b, int *ret_engine_error)
{
        z_stream *s = &w->zlib;
        int r = deflateReset(s);
        if (r != Z_OK) {
                *ret_engine_error = r;
                return -EIO;
        }
        s->next_in = b->in;
        s->avail_in = (uInt)b->in_len;
        s->next_out = b->out;
        s->avail_out = (uInt)b->out_cap;

        for (unsigned i = 0; i < COMPRESS_CALLS_MAX; i++) {
                r = deflate(s, b->last ? Z_FINISH : Z_FULL_FLUSH);
                if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR) {
                        *ret_engine_error = r;
                        return -EIO;
                }
                size_t used = (size_t)(s->next_out - b->out);
                if (b->last ? r == Z_STREAM_END : s->avail_in == 0 && s->avail_out > 0) {
                        b->out_len = used;
                        return 0;
                }
                if (s->avail_out == 0) {
                        if (block_grow_out(b) < 0)
                                return -ENOMEM;
                        s->next_out = b->out + used;
                        s->avail_out = (uInt)(b->out_cap - used);
                }
        }
        *ret_engine_error = 0;
        return -EIO;
}

static int compress_block(Worker *w, Block *b, int *ret_engine_error)
{
        int r;

        *ret_engine_error = 0;
        if (w->z->level == 0)
                r = compress_stored(b);
#if HAVE_ISAL
        else
                r = compress_isal(w, b, ret_engine_error);
        b->crc = crc32_gzip_refl(0, b->in, b->in_len);
#else
        else
                r = compress_zlib(w, b, ret_engine_error);
        b->crc = (uint32_t)crc32_z(0, b->in, b->in_len);
#endif
        return r;
}

static void *worker_main(void *p)
{
        Worker *w = p;
        PGzip *z = w->z;

        pthread_mutex_lock(&z->lock);
        for (;;) {
                while (!z->work.head && !halted_locked(z))
                        pthread_cond_wait(&z->cond_work, &z->lock);
                if (halted_locked(z))
                        break;
                Block *b = z->work.head;
                z->work.head = b->next_work;
                if (!z->work.head)
                        z->work.tail = NULL;
                pthread_mutex_unlock(&z->lock);

                int engine_error, r = compress_block(w, b, &engine_error);

                pthread_mutex_lock(&z->lock);
                if (r < 0) {
                        fail_locked(z, r, "cannot compress block %" PRIu64 " with %s: %s (engine code %d)",
                                    b->seq, pgzip_engine(), strerror(-r), engine_error);
                        break;
                }
                z->ready[b->seq % z->n_blocks] = b;
                if (b->seq == z->write_seq)
                        pthread_cond_signal(&z->cond_ready);
        }
        pthread_mutex_unlock(&z->lock);
        return NULL;
}

/* ---- hasher: SHA-256 of the input, in order ---- */

static void *hasher_main(void *p)
{
        PGzip *z = p;

        pthread_mutex_lock(&z->lock);
        for (;;) {
                while (!z->hash_head && !halted_locked(z))
                        pthread_cond_wait(&z->cond_hash, &z->lock);
                if (halted_locked(z))
                        break;
                Block *b = z->hash_head;
                z->hash_head = b->next_hash;
                if (!z->hash_head)
                        z->hash_tail = NULL;
                pthread_mutex_unlock(&z->lock);

                int ok = EVP_DigestUpdate(z->sha_in, b->in, b->in_len);

                pthread_mutex_lock(&z->lock);
                bool last = b->last;
                block_unref_locked(z, b);
                if (!ok) {
                        fail_locked(z, -EIO, "cannot hash the uncompressed stream with SHA-256");
                        break;
                }
                if (last) {
                        z->hasher_done = true;
                        pthread_cond_broadcast(&z->cond_end);
                        break;
                }
        }
        pthread_mutex_unlock(&z->lock);
        return NULL;
}

/* ---- writer: one gzip member, in order ---- */

static void put_le32(uint8_t *p, uint32_t v)
{
        p[0] = v & 0xff;
        p[1] = (v >> 8) & 0xff;
        p[2] = (v >> 16) & 0xff;
        p[3] = (v >> 24) & 0xff;
}

/* Writes the bytes out and into the blob digest. Returns 0 or the callback's error. */
static int emit(PGzip *z, const void *data, size_t size, NbError *e)
{
        if (size == 0)
                return 0;
        if (!EVP_DigestUpdate(z->sha_out, data, size))
                return nb_error_set(e, -EIO, "cannot hash the compressed stream with SHA-256");
        int r = z->output(z->userdata, data, size);
        if (r != 0)
                return nb_error_set(e, r, "cannot write compressed output at offset %" PRIu64 ": %s",
                                    z->size_out, strerror(r < 0 ? -r : r));
        z->size_out += size;
        return 0;
}

/* The fixed header, as Go's compress/gzip writes it: no name, mtime 0, XFL by level, OS unknown (255), so
 * the bytes do not depend on the machine that made them. */
static int emit_header(PGzip *z, NbError *e)
{
        uint8_t h[GZIP_HEADER_SIZE] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255};
        h[8] = z->level == 1 ? 4 : z->level == 9 ? 2 : 0;
        return emit(z, h, sizeof(h), e);
}

static int write_block(PGzip *z, Block *b, NbError *e)
{
        int r;

        if (b->seq == 0) {
                r = emit_header(z, e);
                if (r < 0)
                        return r;
        }
        r = emit(z, b->out, b->out_len, e);
        if (r < 0)
                return r;
        z->crc = (uint32_t)crc32_combine(z->crc, b->crc, (z_off_t)b->in_len);
        z->size_in += b->in_len;
        if (!b->last)
                return 0;

        uint8_t t[GZIP_TRAILER_SIZE];
        put_le32(t, z->crc);
        put_le32(t + 4, (uint32_t)z->size_in); /* ISIZE is the length mod 2^32 */
        return emit(z, t, sizeof(t), e);
}

static void *writer_main(void *p)
{
        PGzip *z = p;

        pthread_mutex_lock(&z->lock);
        for (;;) {
                size_t slot = z->write_seq % z->n_blocks;
                while (!z->ready[slot] && !halted_locked(z))
                        pthread_cond_wait(&z->cond_ready, &z->lock);
                if (halted_locked(z))
                        break;
                Block *b = z->ready[slot];
                z->ready[slot] = NULL;
                pthread_mutex_unlock(&z->lock);

                NbError e;
                int r = write_block(z, b, &e);

                pthread_mutex_lock(&z->lock);
                bool last = b->last;
                z->write_seq++;
                block_unref_locked(z, b);
                if (r < 0) {
                        fail_locked(z, r, "%s", e.msg);
                        break;
                }
                if (last) {
                        z->writer_done = true;
                        pthread_cond_broadcast(&z->cond_end);
                        break;
                }
        }
        pthread_mutex_unlock(&z->lock);
        return NULL;
}

/* ---- setup and teardown ---- */

/* compress.c checked the format, the output callback, the thread count and the level. */
static int options_check(const SnapCompressorOptions *o, NbError *e)
{
        if (o->block_size != 0 && (o->block_size < PGZIP_BLOCK_MIN || o->block_size > PGZIP_BLOCK_MAX))
                return nb_error_set(e, -EINVAL, "Invalid gzip block size %zu, expected %u..%u",
                                    o->block_size, PGZIP_BLOCK_MIN, PGZIP_BLOCK_MAX);
        return 0;
}

static int worker_init(PGzip *z, Worker *w)
{
        w->z = z;
        if (z->level == 0)
                return 0;
#if HAVE_ISAL
        w->level_buf_size = isal_level_buf_size(isal_level_of(z->level));
        w->level_buf = calloc(1, w->level_buf_size);
        return w->level_buf ? 0 : -ENOMEM;
#else
        if (deflateInit2(&w->zlib, z->level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
                return -ENOMEM;
        w->zlib_initialized = true;
        return 0;
#endif
}

static void worker_done(Worker *w)
{
#if HAVE_ISAL
        free(w->level_buf);
#endif
        if (w->zlib_initialized)
                deflateEnd(&w->zlib);
}

static int sync_init(PGzip *z)
{
        pthread_cond_t *conds[] = {&z->cond_free, &z->cond_work, &z->cond_hash, &z->cond_ready,
                                   &z->cond_end};
        if (pthread_mutex_init(&z->lock, NULL) != 0)
                return -ENOMEM;
        for (size_t i = 0; i < ELEMENTSOF(conds); i++)
                if (pthread_cond_init(conds[i], NULL) != 0) {
                        for (size_t j = 0; j < i; j++)
                                pthread_cond_destroy(conds[j]);
                        pthread_mutex_destroy(&z->lock);
                        return -ENOMEM;
                }
        z->lock_initialized = true;
        return 0;
}

static int threads_start(PGzip *z, NbError *e)
{
        int r = 0;

        for (; z->n_workers_started < z->n_workers && r == 0; z->n_workers_started++) {
                Worker *w = &z->workers[z->n_workers_started];
                r = snap_thread_start(&w->thread, worker_main, w);
                if (r < 0)
                        break;
        }
        if (r == 0) {
                r = snap_thread_start(&z->hasher, hasher_main, z);
                z->hasher_started = r == 0;
        }
        if (r == 0) {
                r = snap_thread_start(&z->writer, writer_main, z);
                z->writer_started = r == 0;
        }
        if (r < 0)
                return nb_error_set(e, r, "cannot start gzip threads: %s", strerror(-r));
        return 0;
}

static int pgzip_alloc(const SnapCompressorOptions *o, PGzip **ret)
{
        PGzip *z = calloc(1, sizeof(PGzip));
        if (!z)
                return -ENOMEM;
        *ret = z; /* partially built: pgzip_free() copes */
        z->output = o->output;
        z->userdata = o->userdata;
        z->level = o->level < 0 ? PGZIP_LEVEL_DEFAULT : o->level;
        z->block_size = o->block_size ? o->block_size : PGZIP_BLOCK_DEFAULT;
        z->n_workers = o->threads ? o->threads : nb_cpus(PGZIP_THREADS_MAX);
        z->n_blocks = 2 * (size_t)z->n_workers + 4;

        z->all = calloc(z->n_blocks, sizeof(Block *));
        z->ready = calloc(z->n_blocks, sizeof(Block *));
        z->workers = calloc(z->n_workers, sizeof(Worker));
        if (!z->all || !z->ready || !z->workers)
                return -ENOMEM;
        int r = snap_digests_new(&z->sha_in, &z->sha_out);
        if (r < 0)
                return r;
        for (unsigned i = 0; i < z->n_workers; i++)
                if (worker_init(z, &z->workers[i]) < 0)
                        return -ENOMEM;
        return sync_init(z);
}

static void pgzip_free(void *p);

/* The verbs below are the gzip backend of compress.h (snap_backend_gzip). */
static int pgzip_new(const SnapCompressorOptions *o, void **ret, NbError *e)
{
        PGzip *z = NULL;
        int r = options_check(o, e);
        if (r >= 0 && (r = pgzip_alloc(o, &z)) < 0)
                r = nb_error_set(e, r, "cannot set up the gzip compressor: %s", strerror(-r));
        if (r >= 0)
                r = threads_start(z, e);
        if (r < 0) {
                pgzip_free(z);
                return r;
        }
        *ret = z;
        return 0;
}

static void pgzip_free(void *p)
{
        PGzip *z = p;
        if (!z)
                return;
        if (z->lock_initialized) {
                pthread_mutex_lock(&z->lock);
                z->stopping = true;
                broadcast_all_locked(z);
                pthread_mutex_unlock(&z->lock);
        }
        for (unsigned i = 0; i < z->n_workers_started; i++)
                pthread_join(z->workers[i].thread, NULL);
        if (z->hasher_started)
                pthread_join(z->hasher, NULL);
        if (z->writer_started)
                pthread_join(z->writer, NULL);
        if (z->lock_initialized) {
                pthread_cond_destroy(&z->cond_free);
                pthread_cond_destroy(&z->cond_work);
                pthread_cond_destroy(&z->cond_hash);
                pthread_cond_destroy(&z->cond_ready);
                pthread_cond_destroy(&z->cond_end);
                pthread_mutex_destroy(&z->lock);
        }
        for (unsigned i = 0; z->workers && i < z->n_workers; i++)
                worker_done(&z->workers[i]);
        for (size_t i = 0; i < z->n_allocated; i++)
                block_free(z->all[i]);
        free(z->all);
        free(z->ready);
        free(z->workers);
        EVP_MD_CTX_free(z->sha_in);
        EVP_MD_CTX_free(z->sha_out);
        free(z);
}

/* ---- producer ---- */

/* Takes a block from the pool, allocating one while the pool is below its size; waits while all are busy. */
static int block_get(PGzip *z, Block **ret, NbError *e)
{
        Block *b = NULL;

        pthread_mutex_lock(&z->lock);
        while (!z->free_list && z->n_allocated >= z->n_blocks && !halted_locked(z))
                pthread_cond_wait(&z->cond_free, &z->lock);
        if (!halted_locked(z) && z->free_list) {
                b = z->free_list;
                z->free_list = b->next_work;
        }
        bool need_new = !halted_locked(z) && !b;
        pthread_mutex_unlock(&z->lock);

        if (need_new) {
                /* Only the producer allocates, so n_allocated and all[] need no lock here. */
                b = block_new(z->block_size);
                if (!b) {
                        pthread_mutex_lock(&z->lock);
                        fail_locked(z, -ENOMEM, "cannot allocate a %zu byte gzip block", z->block_size);
                        pthread_mutex_unlock(&z->lock);
                } else
                        z->all[z->n_allocated++] = b;
        }
        if (!b)
                return error_copy(z, e);
        b->in_len = 0;
        b->out_len = 0;
        b->next_work = b->next_hash = NULL;
        *ret = b;
        return 0;
}

static int block_submit(PGzip *z, Block *b, bool last, NbError *e)
{
        pthread_mutex_lock(&z->lock);
        if (halted_locked(z)) {
                pthread_mutex_unlock(&z->lock);
                return error_copy(z, e);
        }
        b->seq = z->next_seq++;
        b->last = last;
        b->refs = 2;
        if (z->work.tail)
                z->work.tail->next_work = b;
        else
                z->work.head = b;
        z->work.tail = b;
        if (z->hash_tail)
                z->hash_tail->next_hash = b;
        else
                z->hash_head = b;
        z->hash_tail = b;
        pthread_cond_signal(&z->cond_work);
        pthread_cond_signal(&z->cond_hash);
        pthread_mutex_unlock(&z->lock);
        return 0;
}

/* After pgzip_finish(): its failure again, if it failed. */
static int finished_error(PGzip *z, NbError *e)
{
        pthread_mutex_lock(&z->lock);
        int r = snap_error_finished(&z->error, "gzip", e);
        pthread_mutex_unlock(&z->lock);
        return r;
}

/* A full block is queued only when more input arrives, so that the last block, compressed with BFINAL, is
 * never an empty one after a full one: block boundaries depend on input offsets only. */
static int pgzip_write(void *state, const void *data, size_t size, NbError *e)
{
        PGzip *z = state;
        const uint8_t *p = data;
        int r;

        assert(z);
        if (z->finished)
                return finished_error(z, e);
        while (size > 0) {
                if (!z->current) {
                        r = block_get(z, &z->current, e);
                        if (r < 0)
                                return r;
                }
                if (z->current->in_len == z->block_size) {
                        r = block_submit(z, TAKE_PTR(z->current), false, e);
                        if (r < 0)
                                return r;
                        continue;
                }
                size_t n = z->block_size - z->current->in_len;
                if (n > size)
                        n = size;
                memcpy(z->current->in + z->current->in_len, p, n);
                z->current->in_len += n;
                p += n;
                size -= n;
        }
        return 0;
}

static int pgzip_finish(void *state, SnapCompressResult *ret, NbError *e)
{
        PGzip *z = state;
        int r;

        assert(z);
        if (z->finished)
                return finished_error(z, e);
        if (!z->current) {
                r = block_get(z, &z->current, e);
                if (r < 0)
                        return r;
        }
        r = block_submit(z, TAKE_PTR(z->current), true, e);
        if (r < 0)
                return r;
        z->finished = true;

        pthread_mutex_lock(&z->lock);
        while (!(z->writer_done && z->hasher_done) && !halted_locked(z))
                pthread_cond_wait(&z->cond_end, &z->lock);
        r = z->writer_done && z->hasher_done ? 0 : error_copy(z, e);
        pthread_mutex_unlock(&z->lock);
        if (r < 0)
                return r;

        /* Both threads are done with their digests: the lock above ordered their last updates before us. */
        snap_digests_result(z->sha_in, z->sha_out, z->size_in, z->size_out, ret);
        return 0;
}

const SnapCompressorBackend snap_backend_gzip = {
        .name = "gzip",
        .level_min = 0,
        .level_max = SNAP_GZIP_LEVEL_MAX,
        .level_default = PGZIP_LEVEL_DEFAULT,
        .engine = pgzip_engine,
        .new = pgzip_new,
        .write = pgzip_write,
        .finish = pgzip_finish,
        .free = pgzip_free,
};
