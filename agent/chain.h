/* chain.h: the saves of one notebook as a chain of images, and what the last one left in the state dir.
 *
 * A save records, after its manifest is pushed, which image it made and what it packed (state dir:
 * last-save.json, written atomically, naming a record of the tree as that image shows it: snapshot.h, the
 * record of a save). An incremental save builds on that image with one layer of what changed since the
 * record, when every condition of nb_chain_usable() holds; otherwise it is a full save on the base image, as
 * a first save is. The container-start baseline is never touched: a full save always diffs against it. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "common/digest.h"
#include "common/error.h"

#define NB_LAST_SAVE_FILE      "last-save.json"
#define NB_LAST_SAVE_MAX       (64u * 1024)
#define NB_RECORD_PREFIX       "saved-"   /* records are saved-<uuid> in the state dir */
#define NB_CHAIN_WASTE_DEFAULT 25         /* percent: chain_waste_max */
#define NB_RECORD_ROOM_MIN     (4u << 20) /* free bytes left in the state dir besides a save's record */
#define NB_CHAIN_WASTE_MAX     100

typedef struct NbChain {
        char *registry;        /* host[:port] the image was pushed to */
        char *repository;      /* namespace/name */
        char *manifest_digest; /* of the image the save made */
        char *base_image;      /* the base image as configured (--base-image) */
        char *base_digest;     /* its manifest digest then */
        char *excludes;        /* digest of the excluded paths (nb_chain_excludes_digest) */
        char *record;          /* file name of the record in the state dir */
        uint64_t base_layers;  /* layers of the base image */
        uint64_t layers;       /* layers of the saved image */
        uint64_t saves;        /* saves in the chain: 1 for a full save */
        uint64_t chain_bytes;  /* bytes of the files the chain's own layers hold (uncompressed) */
        uint64_t dead_bytes;   /* of those, the bytes later layers deleted or replaced */
} NbChain;

void nb_chain_done(NbChain *c);
/* 1 and the last save, 0 when there is none; a file that cannot be read or parsed is an error. */
int nb_chain_load(const char *state_dir, NbChain *ret, NbError *e);
/* Writes last-save.json atomically (temporary file, fsync, rename). */
int nb_chain_store(const char *state_dir, const NbChain *c, NbError *e);
/* Removes the records in the state dir other than keep (NULL: all); with temporaries, also the temporary
 * files of records (left by a crash: only when no save runs, as a new save may be writing one). Returns how
 * many. */
size_t nb_chain_prune(const char *state_dir, const char *keep, bool temporaries);
/* At start, after a crash: removes the records no last-save.json names (those of saves that did not finish,
 * and their temporary files). Returns how many. */
size_t nb_chain_cleanup(const char *state_dir);
/* STATE_DIR/NAME. */
int nb_chain_path(const char *state_dir, const char *name, char **ret);
/* A new record name: saved-<uuid>. */
int nb_chain_record_name(char **ret);

struct SnapExcludes;
/* The digest of the excluded paths: a chain is only extended while they stay the same. */
int nb_chain_excludes_digest(const struct SnapExcludes *x, char ret[static NB_DIGEST_STR_MAX]);

/* Whether stacking on the chain would leave more than waste_max percent of the chain's own bytes dead: the
 * bytes deleted or replaced by earlier layers (c->dead_bytes) and by the new one, against c->chain_bytes. */
bool nb_chain_wasteful(const NbChain *c, uint64_t new_dead, unsigned waste_max);
